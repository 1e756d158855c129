"""The one way an image file becomes model input: :func:`read_image` (and :func:`read_mask`).

Every path that turns a file into pixels the model sees goes through these functions: the
dataset builders of ``tfds_cosmos`` (which store the result), ``ife-jax predict``, the nnU-Net
planner's folder reader and the notebooks. Bit depth, channels and scaling therefore cannot
differ between training and prediction.

Every image becomes ``uint8 (H, W, 3)`` RGB: grey is replicated, an alpha channel is dropped,
palette images are expanded through their palette, and 16-bit, 32-bit and float images are
rescaled to 0-255 by their own minimum and maximum (``round((v - min) * 255 / (max - min))``;
a constant image becomes all 0). 8-bit images keep their values. Normalisation for the network
(``ife_jax.data.transforms``) follows on this uint8 form. Every mask becomes ``uint8 (H, W)``
with values 0/1 (rules in :func:`to_binary_mask`).
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
from PIL import Image, ImageFile

# Truncated files must fail loudly, never be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class UnreadableImageError(ValueError):
    """A file that cannot be decoded as an image (missing, truncated, not an image)."""


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decodes an image file fully. Raises ``UnreadableImageError`` naming the file."""
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(f"{os.fspath(path)}: cannot decode image ({e})") from e
    return img


def _rescale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Wide-range array -> uint8 by its own min/max (a constant image maps to 0)."""
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def to_rgb8(img: Image.Image) -> np.ndarray:
    """Converts a decoded PIL image of any mode to ``uint8 (H, W, 3)`` RGB.

    Modes: ``L``/``1`` grey (replicated), ``LA`` (alpha dropped), ``P`` palette (expanded),
    ``RGBA``/``CMYK``/``YCbCr``... (converted to RGB), ``I;16``/``I``/``F`` wide range
    (rescaled to 0-255 by the image's own min and max, then replicated).
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = _rescale_to_uint8(np.asarray(img))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("1", "L", "LA"):
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if mode == "P" else img.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype != np.uint8:  # e.g. 48-bit RGB
        arr = _rescale_to_uint8(arr)
    return np.ascontiguousarray(arr)


@dataclasses.dataclass(frozen=True)
class MaskInfo:
    """How a mask was binarised.

    Attributes:
      rule: ``"gt0"`` (values were 0/1 only: foreground is > 0) or ``"gt127"`` (anything else:
        foreground is > 127 on the 8-bit scale).
      non_binary: True when the mask held values other than {0, 1} or {0, 255} (anti-aliased
        grey, several labels, colour).
    """

    rule: str
    non_binary: bool


def to_binary_mask(img: Image.Image) -> tuple[np.ndarray, MaskInfo]:
    """Converts a decoded mask of any mode to ``uint8 (H, W)`` 0/1.

    Rules: a mask whose values are all in {0, 1} is foreground where > 0; otherwise the mask is
    brought to 8-bit grey (palette masks by their indices when those are 0/1, colour masks by
    their channel maximum, 16-bit masks by ``v >> 8``) and foreground is ``> 127``.
    """
    mode = img.mode
    if mode == "P":
        idx = np.asarray(img)
        if idx.size and idx.max() <= 1:
            return idx.astype(np.uint8), MaskInfo("gt0", False)
        grey = np.asarray(img.convert("L"))
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        raw = np.asarray(img).astype(np.int64)
        if raw.size and raw.min() >= 0 and raw.max() <= 1:
            return raw.astype(np.uint8), MaskInfo("gt0", False)
        grey = np.clip(raw >> 8 if raw.max() > 255 else raw, 0, 255).astype(np.uint8)
    elif mode == "F":
        grey = _rescale_to_uint8(np.asarray(img))
    elif mode in ("1", "L"):
        grey = np.asarray(img.convert("L"))
    elif mode == "LA":
        grey = np.asarray(img.convert("L"))
    else:
        grey = np.asarray(img.convert("RGB")).max(axis=2)
    grey = np.asarray(grey, np.uint8)
    values = np.unique(grey)
    if values.size == 0 or values.max() <= 1:
        return (grey > 0).astype(np.uint8), MaskInfo("gt0", False)
    non_binary = not set(values.tolist()) <= {0, 255}
    return (grey > 127).astype(np.uint8), MaskInfo("gt127", non_binary)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as model input: ``uint8 (H, W, 3)`` RGB, as described above.

    Args:
      path: a PNG, JPEG, BMP or TIFF file of any mode (1, L, LA, P, RGB, RGBA, I;16, I, F ...).

    Returns:
      ``uint8 (H, W, 3)``; 16-bit and float images rescaled by their own min and max.

    Raises:
      UnreadableImageError: (a ``ValueError``) naming the file if it is missing, truncated or
        not an image.

    Example:
      >>> image = read_image("scan.png")  # a 16-bit grey PNG -> (H, W, 3) uint8, full range
    """
    return to_rgb8(open_image(path))


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, MaskInfo]:
    """Reads a mask file as ``uint8 (H, W)`` 0/1 plus how it was binarised."""
    return to_binary_mask(open_image(path))


def encode_png(array: np.ndarray) -> bytes:
    """PNG-encodes ``uint8 (H, W)``, ``(H, W, 1)`` or RGB ``(H, W, 3)`` (stored as RGB)."""
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError(f"could not PNG-encode an array of shape {array.shape}")
    return buf.tobytes()
