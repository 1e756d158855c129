"""to_arrays: a source as padded, resized arrays."""

import numpy as np
import pytest

from ife_jax.data import eval_transform, to_arrays


def record(h, w, box, modality="CT"):
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w, 1), np.uint8)
    r0, r1, c0, c1 = box
    mask[r0:r1, c0:c1] = 1
    return dict(image=image, mask=mask, modality=modality, anatomy=b"Liver", image_id=f"{h}x{w}")


def test_pads_and_resizes_images_and_masks_alike():
    source = [record(6, 10, (1, 3, 2, 6)), record(10, 10, (0, 10, 0, 5), modality=b"MRI")]
    out = to_arrays(source, size=10, progress=False)
    assert out["image"].shape == (2, 10, 10, 3) and out["mask"].shape == (2, 10, 10, 1)
    np.testing.assert_array_equal(out["image"][0], eval_transform(source[0]["image"], size=10)[0])
    # 6x10 pads 2 rows on top: the box moves down by 2, no resize at size 10.
    want = np.zeros((10, 10), np.float32)
    want[3:5, 2:6] = 1
    np.testing.assert_array_equal(out["mask"][0, :, :, 0], want)
    assert out["modality"].tolist() == ["CT", "MRI"] and out["anatomy"].tolist() == ["Liver"] * 2
    half = to_arrays(source[1:], size=5, progress=False)["mask"][0, :, :, 0]
    np.testing.assert_allclose(half[:, :2], 1.0)
    np.testing.assert_allclose(half[:, 3:], 0.0)


def test_empty_source_is_an_error():
    with pytest.raises(ValueError, match="no examples"):
        to_arrays([], size=8)
