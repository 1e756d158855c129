"""Argument checks shared by the IFE ops. They run at trace time and raise ``ValueError``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

CRITERIA = ("entropy", "curvature")
ENTROPY_MODES = ("paper", "reference_hist", "reference_unique")
ORDERS = ("raw_first", "selected_first")


def check_features(x, *, name: str = "x") -> tuple[int, int, int, int]:
    """Checks that ``x`` is a (B, H, W, C) NHWC feature array the IFE ops can score.

    Returns:
      The static shape ``(B, H, W, C)``.
    """
    shape = np.shape(x)
    if len(shape) != 4:
        raise ValueError(
            f"{name} must be a (B, H, W, C) NHWC array; got rank {len(shape)} with shape {shape}."
        )
    dtype = jnp.result_type(x)
    if dtype == jnp.bool_:
        raise ValueError(f"{name} must hold numbers, not booleans; got dtype {dtype}.")
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(f"{name} must be a real float or integer array; got dtype {dtype}.")
    b, h, w, c = (int(s) for s in shape)
    if h < 3 or w < 3:
        raise ValueError(
            f"{name} needs H >= 3 and W >= 3 for a 3x3 window; got H={h}, W={w} (shape {shape}). "
            "Is the array channels-first? The IFE ops expect NHWC."
        )
    if c < 1:
        raise ValueError(f"{name} needs at least one channel; got C={c} (shape {shape}).")
    return b, h, w, c


def check_choice(value, choices, *, name: str) -> str:
    if value not in choices:
        raise ValueError(
            f"Unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}."
        )
    return value


def num_selected(channels: int, ratio) -> int:
    """k = int(ratio * C), the number of channels IFE keeps (floor, as the reference)."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"ratio must be a number in (0, 1]; got {ratio!r}.") from None
    if not (0.0 < r <= 1.0):
        raise ValueError(f"ratio must be in (0, 1]; got {ratio!r}.")
    k = int(r * channels)
    if k == 0:
        raise ValueError(
            f"ratio={ratio!r} keeps int({ratio!r} * {channels}) = 0 of C={channels} channels; "
            f"use a ratio of at least 1/{channels}."
        )
    return k


def check_bins(bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2; got {bins!r}.")
    if bins > 4096:
        raise ValueError(
            f"bins={bins} makes a {bins}x{bins} joint histogram per channel; use <= 4096."
        )
    return int(bins)


def as_float32(x):
    """The float32 copy of ``x`` every score is computed on."""
    return jnp.asarray(x).astype(jnp.float32)
