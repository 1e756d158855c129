"""Geometry of the training and evaluation transforms, checked against hand-worked cases."""

import dataclasses

import numpy as np
import pytest

from ife_jax.data import transforms as T


def _shape_pair(h=30, w=44):
    """An image whose bright pixels are exactly the mask (an L shape: no symmetry to hide in)."""
    mask = np.zeros((h, w), np.uint8)
    mask[5:25, 8:14] = 1
    mask[19:25, 8:36] = 1
    image = np.where(mask[:, :, None] > 0, 230, 20).astype(np.uint8).repeat(3, axis=2)
    return image, mask


def test_pad_to_square_centres():
    x = np.arange(6, dtype=np.uint8).reshape(2, 3) + 1
    out, top, left = T.pad_to_square(x)
    assert (top, left) == (0, 0) or out.shape == (3, 3)
    np.testing.assert_array_equal(out, [[1, 2, 3], [4, 5, 6], [0, 0, 0]])
    out, top, left = T.pad_to_square(np.ones((2, 5), np.uint8))
    assert (top, left) == (1, 0) and out[1:3].all() and not out[0].any() and not out[3:].any()


@pytest.mark.parametrize("s", [7, 8, 31])
def test_rotate_90_is_rot90_exactly(s):
    x = np.random.default_rng(0).integers(0, 255, (s, s, 3)).astype(np.uint8)
    np.testing.assert_array_equal(T.rotate(x, 90, interpolation="nearest"), np.rot90(x))
    np.testing.assert_array_equal(T.rotate(x, -90, interpolation="linear"), np.rot90(x, -1))


@pytest.mark.parametrize("seed", range(12))
def test_mask_stays_aligned_with_image_after_augmentation(seed):
    image, mask = _shape_pair()
    rng = np.random.default_rng(seed)
    aug = T.AugmentConfig(p_intensity=0.0, p_vflip=0.5, p_hflip=0.5, p_rotate=0.9)
    img2, mask2 = T.train_augment(image, mask, rng, config=aug)
    assert img2.shape == (44, 44, 3) and mask2.shape == (44, 44)
    assert set(np.unique(mask2)) <= {0, 1}
    bright = img2[:, :, 0] > 125
    iou = (bright & (mask2 > 0)).sum() / (bright | (mask2 > 0)).sum()
    assert iou > 0.9, iou
    assert abs(int(mask2.sum()) - int(mask.sum())) <= 0.1 * mask.sum()
    # Then normalise + resize to a batch size: still aligned.
    x, m = T.resize_pair(T.normalize(img2), mask2, 64)
    assert x.shape == (64, 64, 3) and m.shape == (64, 64, 1) and 0 <= m.min() <= m.max() <= 1
    back = T.denormalize(x)[:, :, 0] > 125
    iou = (back & (m[:, :, 0] > 0.5)).sum() / (back | (m[:, :, 0] > 0.5)).sum()
    assert iou > 0.85, iou


def test_flips_and_rotation_match_numpy_geometry():
    image, mask = _shape_pair(20, 20)
    # Find a seed for each geometric outcome and compare with the NumPy operation.
    cfg = T.AugmentConfig(p_intensity=0.0, p_rotate=0.0)
    outcomes = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        u = np.random.default_rng(seed).random(7)
        img2, mask2 = T.train_augment(image, mask, rng, config=cfg)
        want = mask
        if u[3] < 0.5:
            want = want[::-1]
        if u[4] < 0.5:
            want = want[:, ::-1]
        np.testing.assert_array_equal(mask2, want)
        np.testing.assert_array_equal(img2[:, :, 1] > 125, want > 0)
        outcomes.add((u[3] < 0.5, u[4] < 0.5))
    assert len(outcomes) == 4


def test_intensity_step_never_moves_the_object():
    image, mask = _shape_pair()
    cfg = T.AugmentConfig(p_intensity=1.0, p_brightness_contrast=1.0, p_clahe=1.0, p_vflip=0,
                          p_hflip=0, p_rotate=0)  # fmt: skip
    img2, mask2 = T.train_augment(image, mask, np.random.default_rng(1), config=cfg)
    padded, top, left = T.pad_to_square(mask)
    np.testing.assert_array_equal(mask2, padded)
    inside, outside = img2[mask2 > 0].mean(), img2[(mask2 == 0)][:, 0]
    assert inside > outside.mean() + 100
    assert not np.array_equal(img2, T.pad_to_square(image)[0])


def test_brightness_contrast_formula():
    x = np.array([[0, 100, 200, 255]], np.uint8)
    out = T.brightness_contrast(x, alpha=1.1, beta=-0.1)
    np.testing.assert_array_equal(out, np.clip(np.trunc(x * 1.1 - 25.5), 0, 255))


def test_eval_inverse_returns_original_size_and_pixels():
    rng = np.random.default_rng(0)
    for h, w, size in [(100, 60, 224), (224, 150, 224), (37, 51, 64), (300, 301, 224)]:
        image = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
        x, meta = T.eval_transform(image, size=size)
        assert x.shape == (size, size, 3)
        back = T.invert_eval(T.denormalize(x), **meta)
        assert back.shape == (h, w, 3)
        if max(h, w) == size:  # no resize: an identity model gives back exactly the pixels
            np.testing.assert_allclose(back, image, atol=1e-3)
        one = T.invert_eval(x[:, :, :1], **meta)
        assert one.shape == (h, w, 1)
    # Integer up-scaling with nearest neighbour is inverted exactly.
    labels = rng.integers(0, 2, (40, 56)).astype(np.uint8)
    padded, top, left = T.pad_to_square(labels)
    import cv2

    up = cv2.resize(padded, (112, 112), interpolation=cv2.INTER_NEAREST)
    meta = dict(height=40, width=56, pad_top=top, pad_left=left, padded_size=56)
    np.testing.assert_array_equal(T.invert_eval(up, interpolation="nearest", **meta), labels)


def test_invert_eval_rejects_unknown_interpolation():
    with pytest.raises(ValueError, match="interpolation"):
        T.invert_eval(np.zeros((4, 4)), height=4, width=4, pad_top=0, pad_left=0, padded_size=8,
                      interpolation="cubic")  # fmt: skip


def test_named_augmentations_rotate_only_in_the_reference(monkeypatch):
    """``no_rotation`` is the reference recipe with p_rotate = 0: it flips and changes the
    intensity as the reference does, and never rotates; ``none`` does neither."""
    assert T.AUGMENTATIONS["no_rotation"] == dataclasses.replace(T.REFERENCE_AUGMENT, p_rotate=0.0)
    rotated = []
    real_rotate = T.rotate
    monkeypatch.setattr(T, "rotate", lambda *a, **k: rotated.append(1) or real_rotate(*a, **k))
    image, mask = _shape_pair(24, 24)
    changed = {}
    for name, config in T.AUGMENTATIONS.items():
        rotated.clear()
        changed[name] = 0
        for seed in range(30):
            out, _ = T.train_augment(image, mask, np.random.default_rng(seed), config=config)
            changed[name] += not np.array_equal(out, image)
        changed[name, "rotations"] = len(rotated)
    assert changed["reference", "rotations"] > 0
    assert changed["no_rotation", "rotations"] == changed["none", "rotations"] == 0
    assert changed["no_rotation"] > 0 and changed["none"] == 0
