"""Small helpers that write DMIS folders: the committed ``dummy_data/`` and test fixtures.

``python -m tfds_cosmos.testing`` rewrites every builder's ``dummy_data/``.

Each dummy pair is a dark image with one bright rectangle; the mask is exactly that rectangle.
Sizes and rectangles differ per id, so an image stored with the wrong mask is detected.
"""

from __future__ import annotations

import os
import shutil
import zlib

import numpy as np
from PIL import Image

_HERE = os.path.dirname(os.path.abspath(__file__))


def object_pair(image_id: str, *, size: tuple[int, int] | None = None):
    """A deterministic (image uint8 (H, W), mask uint8 (H, W) 0/1) pair for an id.

    The image is 30 outside and 220 inside a rectangle; the mask is 1 on the same rectangle.
    """
    code = zlib.crc32(image_id.encode())
    h, w = size or (12 + code % 13, 14 + (code >> 5) % 11)
    top, left = 1 + (code >> 9) % (h // 3), 1 + (code >> 13) % (w // 3)
    bottom, right = top + 3 + (code >> 17) % (h // 3), left + 3 + (code >> 21) % (w // 3)
    mask = np.zeros((h, w), np.uint8)
    mask[top:bottom, left:right] = 1
    image = np.where(mask > 0, 220, 30).astype(np.uint8)
    return image, mask


def save(path: str, array: np.ndarray) -> str:
    """Writes ``array`` as an image file (uint16 -> 16-bit grey; format from the extension)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_reference_pair(root: str, image_id: str, subdir: str = "", **kw) -> tuple[str, str]:
    """``<root>/<subdir>/<id>.png`` and ``<id>_mask.png`` (mask 0/255)."""
    image, mask = object_pair(image_id, **kw)
    folder = os.path.join(root, subdir)
    return (
        save(os.path.join(folder, f"{image_id}.png"), image),
        save(os.path.join(folder, f"{image_id}_mask.png"), mask * 255),
    )


def write_tree_pair(root: str, modality: str, anatomy: str, stem: str, mask_suffix: str = ""):
    """``<root>/<modality>/<anatomy>/images/<stem>.png`` and ``masks/<stem><suffix>.png``."""
    image, mask = object_pair(f"{modality}_{anatomy}_{stem}")
    base = os.path.join(root, modality, anatomy)
    return (
        save(os.path.join(base, "images", f"{stem}.png"), image),
        save(os.path.join(base, "masks", f"{stem}{mask_suffix}.png"), mask * 255),
    )


def write_lines(path: str, lines) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in lines))
    return path


REFERENCE_SPLITS = {
    "train": ["CT_Liver_1", "CT_Liver_10.png", "CT_Kidney_1", "CT_Kidney_2", "MRI_Brain_1",
              "MRI_Brain_2", "US_Breast_1"],
    "val": ["CT_Liver_2", "US_Breast_2"],
    "test": ["# comment lines are ignored", "CT_Kidney_3", "MRI_Brain_3", "US_Breast_3_mask.png"],
}  # fmt: skip


def write_cosmos_reference(root: str) -> None:
    """Reference layout, 12 pairs at several depths, split by train/val/test.txt (7/2/3)."""
    for i in ("1", "2", "10"):
        write_reference_pair(root, f"CT_Liver_{i}", "ct")
    for i in ("1", "2", "3"):
        write_reference_pair(root, f"CT_Kidney_{i}", os.path.join("ct", "kidney"))
        write_reference_pair(root, f"MRI_Brain_{i}")
        write_reference_pair(root, f"US_Breast_{i}", "us")
    for split, ids in REFERENCE_SPLITS.items():
        write_lines(os.path.join(root, f"{split}.txt"), ids)


def write_cosmos_tree(root: str) -> None:
    """Tree layout, 2 groups x 6 pairs, no split files (hash split 3/1/2 per group)."""
    for i in range(1, 7):
        write_tree_pair(root, "CT", "Liver", str(i), "_mask" if i == 3 else "")
        write_tree_pair(root, "MRI", "Brain", f"case{i}")


def write_mixed_formats(root: str) -> None:
    """Reference layout, 5 pairs in different storage formats, split 3/1/1 by id lists.

    XRay_Chest_1 grey image, 0/255 mask; Derm_Skin_1 RGBA image, 0/1 mask; CT_Lung_1 16-bit
    image, anti-aliased mask; US_Thyroid_1 palette image, palette 0/1 mask; MRI_Knee_1 RGB image,
    RGB 0/255 mask.
    """
    img, m = object_pair("XRay_Chest_1")
    save(os.path.join(root, "XRay_Chest_1.png"), img)
    save(os.path.join(root, "XRay_Chest_1_mask.png"), m * 255)
    img, m = object_pair("Derm_Skin_1")
    rgba = np.stack([img, img, img, np.full_like(img, 255)], axis=2)
    save(os.path.join(root, "Derm_Skin_1.png"), rgba)
    save(os.path.join(root, "Derm_Skin_1_mask.png"), m)
    img, m = object_pair("CT_Lung_1")
    save(os.path.join(root, "CT_Lung_1.png"), img.astype(np.uint16) * 200)
    soft = m.astype(np.float32) * 255
    soft[1:-1, 1:-1] = (soft[:-2, 1:-1] + soft[2:, 1:-1] + 2 * soft[1:-1, 1:-1]) / 4
    save(os.path.join(root, "CT_Lung_1_mask.png"), np.round(soft).astype(np.uint8))
    img, m = object_pair("US_Thyroid_1")
    for name, arr, pal in (
        ("US_Thyroid_1.png", (img > 100).astype(np.uint8), [30, 30, 30, 220, 220, 220]),
        ("US_Thyroid_1_mask.png", m, [0, 0, 0, 255, 255, 255]),
    ):
        p = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
        p.putpalette(pal + [0] * (768 - len(pal)))
        p.save(os.path.join(root, name))
    img, m = object_pair("MRI_Knee_1")
    save(os.path.join(root, "MRI_Knee_1.png"), np.stack([img, img // 2, img // 3], axis=2))
    save(os.path.join(root, "MRI_Knee_1_mask.png"), np.repeat(m[:, :, None] * 255, 3, axis=2))
    write_lines(os.path.join(root, "train.txt"), ["XRay_Chest_1", "Derm_Skin_1", "CT_Lung_1"])
    write_lines(os.path.join(root, "val.txt"), ["US_Thyroid_1"])
    write_lines(os.path.join(root, "test.txt"), ["MRI_Knee_1"])


SYNTHETIC_GOLDEN = (("train", 0), ("val", 3), ("test", 5))  # (split, index), tiny sizes


def write_synthetic_golden(root: str) -> None:
    """Three synthetic examples (seed 0, 32-64 px) as PNG: the determinism reference."""
    from tfds_cosmos.synthetic.generate import generate_example

    for split, index in SYNTHETIC_GOLDEN:
        ex = generate_example(seed=0, split=split, index=index, min_size=32, max_size=64)
        save(os.path.join(root, f"{ex['image_id']}.png"), ex["image"])
        save(os.path.join(root, f"{ex['image_id']}_mask.png"), ex["mask"] * 255)


def main() -> None:
    targets = {
        os.path.join(_HERE, "synthetic", "dummy_data"): write_synthetic_golden,
        os.path.join(_HERE, "cosmos55k", "dummy_data", "reference"): write_cosmos_reference,
        os.path.join(_HERE, "cosmos55k", "dummy_data", "tree"): write_cosmos_tree,
        os.path.join(_HERE, "dmis_folder", "dummy_data"): write_mixed_formats,
    }
    for root, fn in targets.items():
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        fn(root)
        print("wrote", root)


if __name__ == "__main__":
    main()
