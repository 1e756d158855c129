"""Per-example image/mask transforms of the reference training and test recipe (NumPy + OpenCV).

Everything here runs on the host inside the input pipeline: ``uint8`` or ``float32`` NumPy arrays
in, NumPy arrays out, randomness from an explicit ``np.random.Generator``. Layout is HWC.

Training (reference recipe): with p = 0.9 an intensity step on the image (random brightness /
contrast with limit 0.2, p = 0.5; then CLAHE with clip 1.5 on an 8 x 8 grid, p = 0.5), zero
padding to a centred square, vertical and horizontal flips (p = 0.5 each), rotation by an integer
angle in [-90, 90] (p = 0.5, zero border), normalisation with the reference mean/std, and a
resize to the size the batch was given. Image and mask always get the same geometry.

Evaluation: pad to a centred square, normalise, resize to ``size``; :func:`invert_eval` takes a
prediction back to the original image size.
"""

from __future__ import annotations

import cv2
import numpy as np

# The recipe's sizes and augmentation settings live in a module that needs none of this
# subpackage's extra, so that a training configuration can be built without it.
from ife_jax import _recipe
from ife_jax._recipe import AugmentConfig

#: Reference training sizes: each batch is resized to one of these.
TRAIN_SIZES = _recipe.TRAIN_SIZES
#: Reference evaluation size.
EVAL_SIZE = _recipe.EVAL_SIZE
REFERENCE_AUGMENT = _recipe.REFERENCE_AUGMENT  #: the reference recipe
NO_AUGMENT = _recipe.NO_AUGMENT  #: padding and normalisation only
NO_ROTATION_AUGMENT = _recipe.NO_ROTATION_AUGMENT  #: the reference recipe without its rotation
#: The augmentations a training configuration names (``TrainConfig.augment``).
AUGMENTATIONS = _recipe.AUGMENTATIONS

#: Reference normalisation on 0-255 RGB values.
MEAN = np.array([124.55, 118.90, 102.94], np.float32)
STD = np.array([56.77, 55.97, 57.50], np.float32)

_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def _interp(name: str) -> int:
    if name not in _INTERPOLATION:
        raise ValueError(f"interpolation must be one of {tuple(_INTERPOLATION)}, got {name!r}")
    return _INTERPOLATION[name]


def as_image_mask(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """``record["image"]`` as uint8 (H, W, 3) and ``record["mask"]`` as uint8 (H, W) 0/1."""
    image = np.asarray(record["image"])
    mask = np.asarray(record["mask"])
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if mask.ndim == 3:
        mask = mask[:, :, 0]
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in size")
    return image, mask


def pad_to_square(array: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Zero-pads (H, W, ...) to a centred (S, S, ...) square, S = max(H, W).

    Returns:
      ``(padded, top, left)``; the original sits at ``padded[top:top+H, left:left+W]`` with
      ``top = (S - H) // 2`` and ``left = (S - W) // 2``.
    """
    h, w = array.shape[:2]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    if s == h and s == w:
        return array, 0, 0
    out = np.zeros((s, s) + array.shape[2:], array.dtype)
    out[top : top + h, left : left + w] = array
    return out, top, left


def brightness_contrast(image: np.ndarray, *, alpha: float, beta: float) -> np.ndarray:
    """``clip(image * alpha + beta * 255)`` on uint8 (the reference's brightness-by-max rule)."""
    lut = np.clip(np.arange(256, dtype=np.float32) * alpha + beta * 255.0, 0, 255)
    return cv2.LUT(image, lut.astype(np.uint8))


def clahe(image: np.ndarray, *, clip_limit: float = 1.5, grid: int = 8) -> np.ndarray:
    """CLAHE on the L channel of LAB (colour images) or on the grey values, uint8 in and out."""
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(grid, grid))
    if image.ndim == 2:
        return op.apply(image)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[:, :, 0] = op.apply(np.ascontiguousarray(lab[:, :, 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def rotate(array: np.ndarray, angle: float, *, interpolation: str = "linear") -> np.ndarray:
    """Rotates a square (S, S, ...) array counter-clockwise by ``angle`` degrees, zero border.

    The centre is ((S-1)/2, (S-1)/2), so 90 degrees equals ``np.rot90`` exactly.
    """
    s = array.shape[0]
    c = (s - 1) / 2.0
    m = cv2.getRotationMatrix2D((c, c), float(angle), 1.0)
    out = cv2.warpAffine(
        array,
        m,
        (array.shape[1], s),
        flags=_interp(interpolation),
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return out.reshape(array.shape)


_NORMALIZE_LUT = ((np.arange(256, dtype=np.float32)[:, None] - MEAN) / STD)[None]  # (1, 256, 3)


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 ``(image - MEAN) / STD`` (one table look-up per value)."""
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return cv2.LUT(np.ascontiguousarray(image), _NORMALIZE_LUT)
    return (np.asarray(image, np.float32) - MEAN) / STD


def denormalize(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize` (float32, not rounded)."""
    return image * STD + MEAN


def train_augment(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    config: AugmentConfig = REFERENCE_AUGMENT,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference training augmentation up to (not including) normalisation and resize.

    Args:
      image: uint8 (H, W, 3).
      mask: uint8 (H, W), 0/1.
      rng: source of every random choice (same rng state -> same output).
      config: probabilities and limits.

    Returns:
      ``(image, mask)``: uint8 (S, S, 3) and uint8 (S, S) 0/1 with S = max(H, W); the mask has
      had exactly the same flips and rotation as the image (nearest-neighbour, so it stays 0/1).
    """
    # Draw every random number up front, in a fixed order, so the stream never depends on data.
    u = rng.random(7)
    alpha = 1.0 + rng.uniform(-config.limit, config.limit)
    beta = rng.uniform(-config.limit, config.limit)
    angle = int(rng.integers(-config.max_angle, config.max_angle + 1))
    if u[0] < config.p_intensity:
        if u[1] < config.p_brightness_contrast:
            image = brightness_contrast(image, alpha=alpha, beta=beta)
        if u[2] < config.p_clahe:
            image = clahe(image, clip_limit=config.clahe_clip, grid=config.clahe_grid)
    image, _, _ = pad_to_square(image)
    mask, _, _ = pad_to_square(mask)
    if u[3] < config.p_vflip:
        image, mask = image[::-1], mask[::-1]
    if u[4] < config.p_hflip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    image, mask = np.ascontiguousarray(image), np.ascontiguousarray(mask)
    if u[5] < config.p_rotate and angle != 0:
        image = rotate(image, angle, interpolation="linear")
        mask = rotate(mask, angle, interpolation="nearest")
    return image, mask


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resize of a square float image (S, S, 3) and uint8 mask (S, S) to ``size``.

    Returns:
      float32 (size, size, 3) and float32 (size, size, 1) in [0, 1] (soft edges, as the
      reference's ``mask / 255`` after resizing).
    """
    if image.shape[0] != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    return image.astype(np.float32, copy=False), mask.astype(np.float32, copy=False)[:, :, None]


def eval_transform(image: np.ndarray, *, size: int = EVAL_SIZE) -> tuple[np.ndarray, dict]:
    """Pad to a centred square, normalise, resize to ``size`` (bilinear).

    Args:
      image: uint8 (H, W, 3).
      size: output side in pixels.

    Returns:
      ``(x, meta)``: x float32 (size, size, 3); meta holds ``height``, ``width``, ``pad_top``,
      ``pad_left`` and ``padded_size`` (ints), everything :func:`invert_eval` needs.
    """
    h, w = image.shape[:2]
    padded, top, left = pad_to_square(image)
    x = normalize(padded)
    if x.shape[0] != size:
        x = cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR)
    meta = dict(height=h, width=w, pad_top=top, pad_left=left, padded_size=padded.shape[0])
    return x, meta


def invert_eval(
    prediction: np.ndarray,
    *,
    height: int,
    width: int,
    pad_top: int,
    pad_left: int,
    padded_size: int,
    interpolation: str = "linear",
) -> np.ndarray:
    """Maps a prediction made on :func:`eval_transform`'s output back to the original image.

    Resizes (size, size[, C]) to (padded_size, padded_size[, C]) and crops the padding off.

    Args:
      prediction: (size, size) or (size, size, C) float/uint8 (probabilities, logits, labels).
      height, width, pad_top, pad_left, padded_size: the ``meta`` of :func:`eval_transform`
        (or the same keys of an eval batch).
      interpolation: ``"linear"`` (default, for probabilities/logits) or ``"nearest"``.

    Returns:
      (height, width) or (height, width, C), same dtype.
    """
    pred = np.asarray(prediction)
    p = int(padded_size)
    squeeze = pred.ndim == 3 and pred.shape[2] == 1
    work = pred[:, :, 0] if squeeze else pred
    if work.shape[0] != p:
        dtype = work.dtype
        src = work.astype(np.float32) if dtype in (np.bool_, np.float16) else work
        work = cv2.resize(src, (p, p), interpolation=_interp(interpolation)).astype(dtype)
    t, l = int(pad_top), int(pad_left)
    out = work[t : t + int(height), l : l + int(width)]
    return out[:, :, None] if squeeze else out
