"""nnU-Net raw datasets: ``DatasetXXX_Name/{imagesTr,labelsTr,imagesTs}`` + ``dataset.json``.

Every case is held as a volume ``(C, Z, Y, X)`` (channels first, nnU-Net's axis order) with
its spacing ``(sz, sy, sx)`` in mm and the affine of its first channel file:

- NIfTI (``.nii`` / ``.nii.gz``, read with ``nibabel``): the file's ``(X, Y, Z)`` array is
  transposed to ``(Z, Y, X)`` and the voxel sizes reversed, as nnU-Net's NIfTI reader does; the
  affine is kept untouched so that predictions are written back in the input's world frame.
- PNG: a 2-D image is one slice, ``(C, 1, H, W)`` with spacing ``(999, 1, 1)`` (nnU-Net's
  convention for 2-D data), and the identity affine.

A DMIS folder of ``X.png`` / ``X_mask.png`` pairs is read as a dataset too
(:func:`read_dataset` detects it), so the same planner, preprocessor and trainer serve both.

Labels are made **dichotomous**: the ``foreground`` labels become 1, every other label 0
(default: every label other than background).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The spacing nnU-Net gives the (absent) out-of-plane axis of 2-D images.
PLANAR_SPACING = 999.0


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise ImportError("reading NIfTI needs nibabel: pip install 'ife-jax[nifti]'") from None
    return nibabel


@dataclass(frozen=True)
class Case:
    """One case: its channel files (``_0000``, ``_0001``, ...) and its label file (or None)."""

    name: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class RawDataset:
    """A raw dataset: what ``dataset.json`` declares and the cases found on disk.

    Attributes:
      root: the dataset folder.
      name: the folder name (``Dataset001_Kidney``) or the PNG folder's name.
      channel_names: one modality name per channel (``"CT"``, ``"MR"``, ``"R"``, ...).
      labels: label name -> value, as in ``dataset.json``.
      file_ending: ``".nii.gz"``, ``".nii"`` or ``".png"``.
      training: cases of ``imagesTr`` (with labels).
      test: cases of ``imagesTs`` (labels if ``labelsTs`` has them).
    """

    root: Path
    name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    file_ending: str
    training: tuple[Case, ...]
    test: tuple[Case, ...] = ()

    @property
    def is_2d(self) -> bool:
        return self.file_ending == ".png"


@dataclass(frozen=True)
class Volume:
    """A loaded case: ``image`` (C, Z, Y, X) float32, ``label`` (Z, Y, X) uint8 0/1 or None."""

    name: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray


def read_dataset(root: str | Path) -> RawDataset:
    """The dataset in ``root``: an nnU-Net raw folder (has ``dataset.json``) or a folder of
    ``X.png`` / ``X_mask.png`` pairs (optionally split into ``train/`` and ``test/``).

    Raises:
      ValueError: naming the missing file, the bad ``dataset.json`` field or every case that
        misses a channel or its label.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such dataset folder.")
    if (root / "dataset.json").exists():
        return _read_raw(root)
    return _read_png_pairs(root)


def _read_raw(root: Path) -> RawDataset:
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read it ({err}).") from None
    for key in ("channel_names", "labels", "file_ending"):
        if key not in meta:
            raise ValueError(f"{path}: the field {key!r} is missing.")
    channels = meta["channel_names"]
    if not isinstance(channels, dict) or sorted(channels) != [str(i) for i in range(len(channels))]:
        raise ValueError(
            f"{path}: channel_names must map '0', '1', ... to names; got {channels!r}."
        )
    labels = meta["labels"]
    if not isinstance(labels, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in labels.values()
    ):
        raise ValueError(
            f"{path}: labels must map names to integers (region labels are not supported); "
            f"got {labels!r}."
        )
    if labels.get("background") != 0:
        raise ValueError(f"{path}: labels must contain 'background': 0; got {labels!r}.")
    ending = meta["file_ending"]
    if ending not in (".nii.gz", ".nii", ".png"):
        raise ValueError(f"{path}: file_ending must be .nii.gz, .nii or .png; got {ending!r}.")
    names = tuple(channels[str(i)] for i in range(len(channels)))
    training = _cases(root / "imagesTr", root / "labelsTr", ending, len(names), need_label=True)
    if not training:
        raise ValueError(f"{root / 'imagesTr'}: no training cases (CASE_0000{ending}).")
    test = ()
    if (root / "imagesTs").is_dir():
        test = _cases(root / "imagesTs", root / "labelsTs", ending, len(names), need_label=False)
    return RawDataset(root, root.name, names, dict(labels), ending, training, test)


def _cases(images: Path, labels: Path, ending: str, channels: int, *, need_label: bool):
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    found: dict[str, dict[int, Path]] = {}
    for p in sorted(images.glob("*" + ending)) if images.is_dir() else ():
        m = pattern.match(p.name)
        if m:
            found.setdefault(m.group(1), {})[int(m.group(2))] = p
    problems, cases = [], []
    for name, files in sorted(found.items()):
        missing = [f"{name}_{c:04d}{ending}" for c in range(channels) if c not in files]
        if missing:
            problems.append(f"{images}: missing channel file(s) {', '.join(missing)}")
            continue
        label = labels / f"{name}{ending}"
        if not label.exists():
            if need_label:
                problems.append(f"{label}: missing label of case {name}")
                continue
            label = None
        cases.append(Case(name, tuple(files[c] for c in range(channels)), label))
    if problems:
        raise ValueError("bad cases: " + "; ".join(problems))
    return tuple(cases)


def _read_png_pairs(root: Path) -> RawDataset:
    def pairs(folder: Path):
        images = sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_mask"))
        return tuple(
            Case(p.stem, (p,), p.with_name(p.stem + "_mask.png"))
            for p in images
            if p.with_name(p.stem + "_mask.png").exists()
        )

    train_dir = root / "train" if (root / "train").is_dir() else root
    training = pairs(train_dir)
    if not training:
        raise ValueError(f"{root}: neither a dataset.json nor X.png / X_mask.png pairs.")
    test = pairs(root / "test") if (root / "test").is_dir() else ()
    labels = {"background": 0, "foreground": 1}
    return RawDataset(root, root.name, ("R", "G", "B"), labels, ".png", training, test)


def foreground_values(dataset: RawDataset, foreground: str | None) -> tuple[int, ...]:
    """The label values that make the binary foreground.

    Args:
      foreground: ``None`` (every non-background label), or a comma-separated list of label
        names or values from ``dataset.json`` (``"kidney"``, ``"1,2"``).

    Raises:
      ValueError: naming a label the dataset does not have.
    """
    values = {v for v in dataset.labels.values() if v != 0}
    if foreground is None:
        return tuple(sorted(values))
    out = []
    for item in str(foreground).split(","):
        item = item.strip()
        if item in dataset.labels:
            out.append(dataset.labels[item])
        elif item.lstrip("-").isdigit() and int(item) in values:
            out.append(int(item))
        else:
            raise ValueError(
                f"--foreground {item!r} is not a label of {dataset.name}: {dataset.labels}."
            )
    if 0 in out:
        raise ValueError("--foreground cannot include the background label 0.")
    return tuple(sorted(set(out)))


def read_image_file(
    path: Path, *, mask: bool = False
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """One file as ``(array (Z, Y, X), spacing, affine)``; a PNG image is read as RGB
    ``(3, 1, H, W)``, a PNG mask (``mask=True``) as grey ``(1, H, W)``.

    Raises:
      ValueError: naming the file if it cannot be read or is not 3-D (NIfTI) / 2-D (PNG).
    """
    path = Path(path)
    try:
        if path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                a = np.asarray(im.convert("L" if mask else "RGB"))
            a = a[None] if mask else np.moveaxis(a, -1, 0)[:, None]
            return a, (PLANAR_SPACING, 1.0, 1.0), np.eye(4)
        img = _nibabel().load(str(path))
        a = np.asanyarray(img.dataobj)
        if a.ndim == 4 and a.shape[3] == 1:
            a = a[..., 0]
        if a.ndim != 3:
            raise ValueError(f"expected a 3-D volume, got shape {a.shape}")
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        return a.transpose(2, 1, 0), zooms[::-1], np.asarray(img.affine, np.float64)
    except ImportError:
        raise
    except Exception as err:  # any reader failure means "unreadable"
        raise ValueError(f"{path}: cannot read it ({type(err).__name__}: {err}).") from None


def load_case(
    case: Case, foreground: tuple[int, ...], *, label_values: tuple[int, ...] | None = None
) -> Volume:
    """Reads a case's channels and label and checks them against each other.

    Raises:
      ValueError: naming the file: unreadable, a shape or affine that differs from the first
        channel's, a non-integer label, or a label value ``dataset.json`` does not declare.
    """
    channels, spacing, affine = [], None, None
    for path in case.images:
        a, sp, af = read_image_file(path)
        a = a.astype(np.float32)
        if a.ndim == 4:  # RGB PNG: (3, 1, H, W)
            parts = list(a)
        else:
            parts = [a]
        if spacing is None:
            spacing, affine, shape = sp, af, parts[0].shape
        elif parts[0].shape != shape:
            raise ValueError(
                f"{path}: shape {parts[0].shape} differs from the first channel's {shape}."
            )
        elif not np.allclose(af, affine, atol=1e-3):
            raise ValueError(f"{path}: its affine differs from the first channel's.")
        channels.extend(parts)
    image = np.stack(channels)
    label = None
    if case.label is not None:
        lab, _, laf = read_image_file(case.label, mask=True)
        if lab.shape != image.shape[1:]:
            raise ValueError(
                f"{case.label}: label shape {lab.shape} differs from the image's {image.shape[1:]}."
            )
        if case.label.suffix != ".png" and not np.allclose(laf, affine, atol=1e-3):
            raise ValueError(f"{case.label}: its affine differs from the image's.")
        if np.issubdtype(lab.dtype, np.floating) and not np.array_equal(lab, np.round(lab)):
            raise ValueError(f"{case.label}: labels must be integers; found non-integer values.")
        lab = lab.astype(np.int64)
        if case.label.suffix == ".png":
            lab = (lab > 127).astype(np.int64) if lab.max() > 1 else lab
        if label_values is not None:
            extra = sorted(set(np.unique(lab).tolist()) - set(label_values))
            if extra:
                raise ValueError(f"{case.label}: label values {extra} are not in dataset.json.")
        label = np.isin(lab, foreground).astype(np.uint8)
    return Volume(case.name, image, label, tuple(float(s) for s in spacing), affine)


def load_cases(
    dataset: RawDataset | None, foreground: tuple[int, ...], cases=None, *, check: bool = True
):
    """Yields :class:`Volume` for every training case (or ``cases``); after the last, raises
    one ``ValueError`` naming every bad file, if any. ``check`` tests label values against
    ``dataset.json``."""
    problems = []
    values = tuple(dataset.labels.values()) if check and dataset is not None else None
    name = dataset.name if dataset is not None else "input"
    for case in dataset.training if cases is None else cases:
        try:
            vol = load_case(case, foreground, label_values=values)
        except ValueError as err:
            problems.append(str(err))
            continue
        yield vol
    if problems:
        raise ValueError(f"{name}: {len(problems)} bad case(s): " + " | ".join(problems))


def write_prediction(mask: np.ndarray, path: Path, *, affine: np.ndarray) -> None:
    """Writes a (Z, Y, X) uint8 mask as NIfTI with ``affine``, or as a PNG (0/255) for 2-D."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        from PIL import Image

        Image.fromarray((mask[0] > 0).astype(np.uint8) * 255).save(path)
        return
    nib = _nibabel()
    img = nib.Nifti1Image(mask.transpose(2, 1, 0).astype(np.uint8), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
