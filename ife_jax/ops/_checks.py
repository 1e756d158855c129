"""Argument checks shared by the IFE ops. They run at trace time and raise ``ValueError``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

CRITERIA = ("entropy", "curvature")
ENTROPY_MODES = ("paper", "reference_hist", "reference_unique")
ORDERS = ("raw_first", "selected_first")


def check_features(x, *, name: str = "x") -> tuple[int, ...]:
    """Checks that ``x`` is a feature array the IFE ops can score, 2-D or 3-D by rank.

    ``(B, H, W, C)`` (NHWC) holds 2-D feature maps, ``(B, D, H, W, C)`` (NDHWC) 3-D ones.

    Returns:
      The static shape, ``(B, H, W, C)`` or ``(B, D, H, W, C)``.
    """
    shape = np.shape(x)
    if len(shape) not in (4, 5):
        raise ValueError(
            f"{name} must be a (B, H, W, C) NHWC or a (B, D, H, W, C) NDHWC array; got rank "
            f"{len(shape)} with shape {shape}."
        )
    dtype = jnp.result_type(x)
    if dtype == jnp.bool_:
        raise ValueError(f"{name} must hold numbers, not booleans; got dtype {dtype}.")
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(f"{name} must be a real float or integer array; got dtype {dtype}.")
    dims = tuple(int(s) for s in shape)
    if len(dims) == 5 and dims[1] < 3:
        raise ValueError(
            f"{name} needs D >= 3 for a 3x3x3 window; got D={dims[1]} (shape {shape}). "
            "Is the array channels-first? The IFE ops expect NDHWC."
        )
    h, w, c = dims[-3:]
    if h < 3 or w < 3:
        layout = "NHWC" if len(dims) == 4 else "NDHWC"
        raise ValueError(
            f"{name} needs H >= 3 and W >= 3 for a 3x3 window; got H={h}, W={w} (shape {shape}). "
            f"Is the array channels-first? The IFE ops expect {layout}."
        )
    if c < 1:
        raise ValueError(f"{name} needs at least one channel; got C={c} (shape {shape}).")
    return dims


def check_choice(value, choices, *, name: str) -> str:
    if value not in choices:
        raise ValueError(
            f"Unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}."
        )
    return value


def check_ife(ife, ratios, n: int | None = None, *, name: str) -> None:
    """Checks a network's ``ife`` criterion (``None`` or one of :data:`CRITERIA`) and ``ratios``.

    Every ratio lies in [0, 1]; a ratio of 0 switches IFE off at that insertion point (no IFE
    module there and no extra channels after it). With ``n`` given, there must be ``n`` ratios.

    Raises:
      ValueError: naming ``name`` and the bad value.
    """
    if ife is not None and ife not in CRITERIA:
        raise ValueError(f"{name}: ife must be None, 'curvature' or 'entropy'; got {ife!r}.")
    if ratios is None:
        return
    ratios = tuple(ratios)
    if n is not None and len(ratios) != n:
        raise ValueError(f"{name}: ratios must have {n} entries; got {ratios!r}.")
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name}: ratios must be numbers in [0, 1]; got {ratios!r}.")
        if not 0.0 <= float(r) <= 1.0:
            raise ValueError(
                f"{name}: ratios must each lie in [0, 1] (0: no IFE at that point); got {ratios!r}."
            )


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
