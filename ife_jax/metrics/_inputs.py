"""Input checks and conversions shared by the metric modules (host NumPy arrays)."""

from __future__ import annotations

import math

import numpy as np

#: Empty-mask cases, as reported per image: neither mask empty, both empty, only the
#: prediction empty, only the ground truth empty.
EMPTY_CASES = ("none", "both", "pred", "gt")


#: How far a float probability map may stray outside [0, 1] and still be read as one: float32
#: rounding in the sigmoid, the resize back to the image size and a few arithmetic steps stays
#: within tens of ulps of 1.0; 64 ulps (7.6e-6) covers that with margin and is far below the
#: smallest step of a 0-255 map (1/255). Values within it are clipped to [0, 1].
PROB_TOLERANCE = 64 * float(np.finfo(np.float32).eps)


def _check_map(a: np.ndarray, name: str, ndims: tuple[int, ...] = (2,)) -> None:
    if a.ndim not in ndims:
        want = "a 2-D (H, W)" if ndims == (2,) else "a 2-D (H, W) or 3-D (D, H, W)"
        raise ValueError(f"{name} must be {want} array, got shape {a.shape}.")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}.")
    if a.dtype != np.bool_ and not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be numeric or boolean, got dtype {a.dtype}.")


def as_unit(x, *, name: str = "pred", ndims: tuple[int, ...] = (2,)) -> tuple[np.ndarray, bool]:
    """A (H, W) prediction as float values in [0, 1], and whether it was on the 0-255 scale.

    The rule, by dtype:
    - bool: {0, 1}.
    - integer: values in [0, 255]; a map whose maximum exceeds 1 is on the 0-255 scale (divided
      by 255), otherwise it is a {0, 1} mask.
    - float: a map within ``[-PROB_TOLERANCE, 1 + PROB_TOLERANCE]`` is a probability map
      (clipped to [0, 1]; a maximum of 1.0000001 is rounding, not the 0-255 scale); a map
      with larger values is on the 0-255 scale (at most ``255 + 255 * PROB_TOLERANCE``).

    Raises:
      ValueError: ``x`` is not 2-D, is empty, holds NaN/inf, or values outside those ranges
        (the message gives the range found).
    """
    a = np.asarray(x)
    _check_map(a, name, ndims)
    if a.dtype == np.bool_:
        return a.astype(np.float64), False
    lo, hi = a.min(), a.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} holds NaN or infinite values.")
    tol = PROB_TOLERANCE if np.issubdtype(a.dtype, np.floating) else 0.0
    if lo < -tol or hi > 255 * (1 + tol):
        raise ValueError(f"{name} values must lie in [0, 1] or [0, 255], got [{lo}, {hi}].")
    if hi > 1 + tol:
        return np.clip(a.astype(np.float64), 0.0, 255.0) / 255.0, True
    return np.clip(a.astype(np.float64), 0.0, 1.0), False


def binarize(x, *, name: str = "pred", ndims: tuple[int, ...] = (2,)) -> np.ndarray:
    """Foreground of a (H, W) prediction: ``> 0.5`` on [0, 1], ``> 128`` on 0-255 (the DIS rule).

    The scale is decided by :func:`as_unit`. Booleans are returned unchanged (as a bool array).
    """
    a = np.asarray(x)
    if a.dtype == np.bool_:
        _check_map(a, name, ndims)
        return a
    u, was255 = as_unit(a, name=name, ndims=ndims)
    return u > (128.0 / 255.0 if was255 else 0.5)


def as_target(x, *, name: str = "gt", ndims: tuple[int, ...] = (2,)) -> np.ndarray:
    """A (H, W) ground truth as a bool mask; it must be binary.

    Accepted: bool, or numbers whose values are all in {0, 1} or all in {0, 255} (any dtype);
    foreground is the non-zero value. Anything else (``{0, 2}``, an anti-aliased 0-255 mask,
    a probability map, several labels) is ambiguous and refused: binarise it first.

    Raises:
      ValueError: ``x`` is not 2-D, is empty, or is not binary (the message lists its values).
    """
    a = np.asarray(x)
    _check_map(a, name, ndims)
    if a.dtype == np.bool_:
        return a
    zero = a == 0
    if np.all(zero | (a == 1)) or np.all(zero | (a == 255)):
        return ~zero
    values = np.unique(a[np.isfinite(a)]) if np.issubdtype(a.dtype, np.floating) else np.unique(a)
    shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if values.size > 8 else "")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        shown += ", NaN or inf"
    raise ValueError(
        f"{name} must be a binary mask with values {{0, 1}} or {{0, 255}} (or bool); got "
        f"values {{{shown}}}. Binarise it first (e.g. {name} > 127 for an anti-aliased "
        "0-255 mask)."
    )


def check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape.")


def normalize_spacing(spacing, ndim: int = 2) -> tuple[float, ...]:
    """``spacing`` (a number or one value per axis) as ``ndim`` positive floats."""
    s = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if s.shape == (1,):
        s = np.repeat(s, ndim)
    if s.shape != (ndim,):
        what = "a (row, col) pair" if ndim == 2 else f"{ndim} values (one per axis)"
        raise ValueError(f"spacing must be a number or {what}, got {spacing!r}.")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be positive and finite, got {spacing!r}.")
    return tuple(float(v) for v in s)


def image_diagonal(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """Diagonal of the image extent, ``sqrt((H*sy)^2 + (W*sx)^2)`` (and ``D*sz`` in 3-D), in
    spacing units.

    It exceeds every distance between two pixels of the image: the stand-in for a distance
    when exactly one mask is empty.
    """
    return math.hypot(*(n * s for n, s in zip(shape, spacing, strict=True)))


def empty_case(pred_bin: np.ndarray, gt_bin: np.ndarray) -> str:
    """One of :data:`EMPTY_CASES` for two boolean masks."""
    p, g = bool(pred_bin.any()), bool(gt_bin.any())
    if p and g:
        return "none"
    if not p and not g:
        return "both"
    return "pred" if not p else "gt"


def bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """Bounding box of the True pixels (any rank) grown by ``margin`` and clipped to the
    image."""
    out = []
    for axis, n in enumerate(mask.shape):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=others))
        if idx.size == 0:
            return None
        out.append(slice(max(idx[0] - margin, 0), min(idx[-1] + 1 + margin, n)))
    return tuple(out)
