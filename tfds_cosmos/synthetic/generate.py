"""Procedural DMIS-like images: one object per image, modality-specific texture and noise.

Every example is a pure function of ``(seed, split, index)`` and the size range, so a dataset
is reproducible from its config alone. Pseudo-modalities:

=========  ===========================================================================
``CT``     body ellipse on air, smooth tissue texture, Gaussian noise, bright object
``MRI``    multiplicative bias field, Rician noise, clearly darker or brighter object
``US``     fan-shaped sector, multiplicative speckle, dark (hypoechoic) object, very soft edge
``XRay``   smooth gradients with rib-like bands, little noise, faint blurred object
``Derm``   colour skin texture with hairs, brown irregular lesion
=========  ===========================================================================

Anatomies are shape families: ``Blob`` (smooth), ``Lesion`` (small, irregular), ``Organ``
(large, elongated with a lobe).
"""

from __future__ import annotations

import cv2
import numpy as np

MODALITIES = ("CT", "MRI", "US", "XRay", "Derm")
ANATOMIES = ("Blob", "Lesion", "Organ")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-std band-limited noise: random values every ``cell`` px, cubic upsampled."""
    gh, gw = max(2, int(np.ceil(h / cell)) + 1), max(2, int(np.ceil(w / cell)) + 1)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    fine = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return (fine - fine.mean()) / (fine.std() + 1e-6)


def _object_mask(rng: np.random.Generator, h: int, w: int, anatomy: str) -> np.ndarray:
    """One filled, irregular star-shaped polygon, ``uint8 (h, w)`` 0/1."""
    s = min(h, w)
    scale = {"Blob": (0.15, 0.28), "Lesion": (0.08, 0.16), "Organ": (0.22, 0.33)}[anatomy]
    r0 = rng.uniform(*scale) * s
    cy = rng.uniform(0.5 * h - 0.15 * s, 0.5 * h + 0.15 * s)
    cx = rng.uniform(0.5 * w - 0.15 * s, 0.5 * w + 0.15 * s)
    theta = np.linspace(0.0, 2.0 * np.pi, 256, endpoint=False)
    kmax, amp = {"Blob": (4, 0.18), "Lesion": (9, 0.35), "Organ": (3, 0.12)}[anatomy]
    r = np.ones_like(theta)
    for k in range(2, kmax + 1):
        r += rng.uniform(0.0, amp / k * 2.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.35, None) * r0
    aspect = rng.uniform(1.4, 2.0) if anatomy == "Organ" else rng.uniform(1.0, 1.3)
    rot = rng.uniform(0, np.pi)
    x, y = r * np.cos(theta) * aspect, r * np.sin(theta) / aspect
    xr = x * np.cos(rot) - y * np.sin(rot) + cx
    yr = x * np.sin(rot) + y * np.cos(rot) + cy
    pts = np.stack([np.clip(xr, 1, w - 2), np.clip(yr, 1, h - 2)], axis=1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=sigma)


def _render(rng, mask, modality):
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yn, xn = yy / h - 0.5, xx / w - 0.5
    if modality == "CT":
        body = ((xn / 0.48) ** 2 + (yn / 0.44) ** 2 <= 1.0).astype(np.float32)
        body = _soft(body, 1.0)
        tissue = 0.42 + 0.06 * _smooth_noise(rng, h, w, 12) + 0.03 * _smooth_noise(rng, h, w, 3)
        obj = _soft(mask, rng.uniform(0.8, 1.6))
        img = body * (tissue + rng.uniform(0.15, 0.3) * obj) + 0.03
        img += rng.normal(0.0, 0.03, (h, w)).astype(np.float32)
        return np.repeat(img[:, :, None], 3, axis=2)
    if modality == "MRI":
        # The object's contrast (0.28-0.4) exceeds the bias field's swing over an object
        # (0.12 std), so the target can be read from the image.
        bias = 1.0 + 0.12 * _smooth_noise(rng, h, w, max(h, w) / 2)
        tissue = 0.45 + 0.06 * _smooth_noise(rng, h, w, 8)
        obj = _soft(mask, rng.uniform(1.5, 2.5))
        sign = rng.choice([-1.0, 1.0])
        clean = np.clip(bias * (tissue + sign * rng.uniform(0.28, 0.4) * obj), 0, None)
        sigma = 0.05
        n1 = rng.normal(0, sigma, (h, w)).astype(np.float32)
        n2 = rng.normal(0, sigma, (h, w)).astype(np.float32)
        img = np.sqrt((clean + n1) ** 2 + n2**2)
        return np.repeat(img[:, :, None], 3, axis=2)
    if modality == "US":
        ang = np.arctan2(xx - w / 2, yy + 0.15 * h)
        rad = np.hypot(xx - w / 2, yy + 0.15 * h)
        fan = ((np.abs(ang) < 0.6) & (rad < 1.12 * h)).astype(np.float32)
        echo = 0.5 + 0.08 * _smooth_noise(rng, h, w, 10)
        obj = _soft(mask, rng.uniform(2.5, 4.0))
        clean = echo * (1.0 - rng.uniform(0.55, 0.75) * obj)
        speckle = rng.rayleigh(0.8, (h, w)).astype(np.float32)
        speckle = cv2.GaussianBlur(speckle, (0, 0), 0.7)
        img = fan * clean * speckle
        return np.repeat(img[:, :, None], 3, axis=2)
    if modality == "XRay":
        grad = 0.35 + 0.25 * (yn + 0.5) + 0.05 * _smooth_noise(rng, h, w, max(h, w) / 3)
        bands = 0.06 * np.sin(2 * np.pi * (yn * rng.uniform(5, 8) + 0.3 * np.abs(xn)))
        # Faint and blurred, but brighter (0.24-0.32) than the rib bands' swing (0.12).
        obj = _soft(mask, rng.uniform(2.0, 3.5))
        img = grad + bands + rng.uniform(0.24, 0.32) * obj
        img += rng.normal(0.0, 0.01, (h, w)).astype(np.float32)
        return np.repeat(img[:, :, None], 3, axis=2)
    # Derm: colour image
    skin = np.array([0.85, 0.62, 0.52], np.float32) * rng.uniform(0.85, 1.05)
    tex = 0.04 * _smooth_noise(rng, h, w, 8)[:, :, None]
    lesion = np.array([0.42, 0.26, 0.18], np.float32) * rng.uniform(0.7, 1.1)
    var = 0.08 * _smooth_noise(rng, h, w, 5)[:, :, None]
    obj = _soft(mask, rng.uniform(1.0, 2.0))[:, :, None]
    img = (skin + tex) * (1 - obj) + (lesion + var) * obj
    hairs = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(0, 6))):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(hairs, p0, p1, 1, 1, lineType=cv2.LINE_AA)
    img = img * (1 - 0.7 * hairs[:, :, None].astype(np.float32))
    img += rng.normal(0.0, 0.015, (h, w, 3)).astype(np.float32)
    return img


def generate_example(
    *, seed: int, split: str, index: int, min_size: int = 128, max_size: int = 384
) -> dict:
    """One synthetic example, a pure function of its arguments.

    Args:
      seed: dataset seed.
      split: ``"train"``, ``"val"`` or ``"test"``.
      index: example number within the split.
      min_size, max_size: height and width are drawn independently in ``[min_size, max_size]``.

    Returns:
      dict with ``image`` uint8 (H, W, 3), ``mask`` uint8 (H, W) 0/1 (one connected object),
      ``modality``, ``anatomy`` and ``image_id`` (``<Modality>_<Anatomy>_<split><index>``).
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {tuple(SPLIT_CODES)}, got {split!r}")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    modality = MODALITIES[int(rng.integers(len(MODALITIES)))]
    anatomy = ANATOMIES[int(rng.integers(len(ANATOMIES)))]
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    mask = _object_mask(rng, h, w, anatomy)
    img = _render(rng, mask, modality)
    image = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return {
        "image": image,
        "mask": mask,
        "modality": modality,
        "anatomy": anatomy,
        "image_id": f"{modality}_{anatomy}_{split}{index:06d}",
    }
