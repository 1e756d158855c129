"""The IFE math written with ``keras.ops``, for the TensorFlow and PyTorch backends.

On the JAX backend :class:`ife_jax.keras.IFELayer` calls the pure JAX functions of
:mod:`ife_jax.ops`; on every other Keras backend it calls the functions here. They compute the
same quantities with the same conventions (tested against the JAX functions on the JAX backend):

- scores in float32 whatever the input dtype, carrying no gradient;
- curvature: the sum of absolute responses of the fixed 3x3 kernel, no padding;
- entropy modes ``"paper"``, ``"reference_hist"`` and ``"reference_unique"`` as in
  :func:`ife_jax.entropy_scores` (joint histograms are counted by sorting the cell keys of each
  channel and measuring runs of equal keys, which needs memory linear in the pixel count);
- selection: best first, ties to the lower channel index, non-finite scores last.

Scores agree with the JAX functions to float32 rounding (the summation order differs); the
reference histogram counts agree exactly. All functions take NHWC (B, H, W, C) tensors of the
active backend, and the curvature, paper entropy and selection also NDHWC (B, D, H, W, C)
volumes, with the 3-D definitions of :mod:`ife_jax.ops.curvature` and
:mod:`ife_jax.ops.entropy`.
"""

from __future__ import annotations

from keras import ops

from ife_jax.ops._checks import (
    CRITERIA,
    ENTROPY_MODES,
    ORDERS,
    check_bins,
    check_choice,
    num_selected,
)
from ife_jax.ops.curvature import _A, _B, _C3, _E3, _F3, _G, CURVATURE_MODES
from ife_jax.ops.entropy import _INV_26


def _shift(x, dy: int, dx: int):
    """``x[:, dy:dy + H - 2, dx:dx + W - 2]``: one of the nine 3x3 window offsets (VALID)."""
    ye = dy - 2 if dy < 2 else None
    xe = dx - 2 if dx < 2 else None
    return x[:, dy:ye, dx:xe, :]


def _neighbour_mean(x):
    """Mean of each pixel's 8 neighbours with zero padding 1; the window sum in raster order."""
    p = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    total = None
    for dy in range(3):
        for dx in range(3):
            s = _shift(p, dy, dx)
            total = s if total is None else total + s
    return (total - x) / 8.0


def _neighbour_mean_3d(x):
    """Mean of each voxel's 26 neighbours, zero padding 1; the window summed separably along
    W, then H, then D, times float32(1/26), as :func:`ife_jax.ops.entropy.neighbour_mean`."""
    total = x
    for axis in (3, 2, 1):
        pad = [[0, 0]] * 5
        pad[axis] = [1, 1]
        p = ops.pad(total, pad)
        n = total.shape[axis]
        cut = [slice(None)] * 5
        parts = []
        for s in range(3):
            cut[axis] = slice(s, s + n)
            parts.append(p[tuple(cut)])
        total = parts[0] + parts[1] + parts[2]
    return (total - x) * _INV_26


def _check_rank(x) -> None:
    if len(x.shape) not in (4, 5):
        raise ValueError(
            "x must be a (B, H, W, C) NHWC or (B, D, H, W, C) NDHWC tensor; got shape "
            f"{tuple(x.shape)}."
        )


def _float32(x):
    return ops.stop_gradient(ops.cast(x, "float32"))


def _rows(x):
    """(B, H, W, C) -> (B * C, H * W) (or (B * C, D * H * W)): one row per (sample, channel)."""
    shape = ops.shape(x)
    b, c, n = shape[0], shape[-1], 1
    for s in shape[1:-1]:
        n = n * s
    perm = (0, len(shape) - 1, *range(1, len(shape) - 1))
    return ops.reshape(ops.transpose(x, perm), (b * c, n))


def _run_counts(sorted_rows):
    """Lengths of the runs of equal values in each row of a sorted (R, N) tensor.

    Returns (R, N) float32: entry ``[r, i]`` is the length of the i-th run of row ``r`` (runs in
    ascending order of value), zero past the last run.
    """
    r, n = ops.shape(sorted_rows)
    first = ops.ones_like(sorted_rows[:, :1], dtype="bool")
    new = ops.concatenate([first, sorted_rows[:, 1:] != sorted_rows[:, :-1]], axis=1)
    run = ops.cumsum(ops.cast(new, "int32"), axis=1) - 1
    seg = run + ops.arange(r, dtype="int32")[:, None] * n
    counts = ops.segment_sum(
        ops.ones((r * n,), dtype="float32"), ops.reshape(seg, (-1,)), num_segments=r * n
    )
    return ops.reshape(counts, (r, n))


def _sum_plogp(counts, total):
    """``-sum p log2 p`` over the last axis with ``p = counts / total`` (empty cells add 0)."""
    p = counts / total
    safe = ops.where(p > 0, p, 1.0)
    return -ops.sum(ops.where(p > 0, p * ops.log2(safe), 0.0), axis=-1)


def _curvature_3d(x):
    """Sum of |response| to the 3x3x3 kernel over the valid region of (B, D, H, W, C)."""

    def at(dz, dy, dx):
        d, h, w = x.shape[1:4]
        return x[:, dz : dz + d - 2, dy : dy + h - 2, dx : dx + w - 2, :]

    steps = {}
    for dz in range(3):
        for dy in range(3):
            for dx in range(3):
                n = abs(dz - 1) + abs(dy - 1) + abs(dx - 1)
                if n < 3:
                    term = at(dz, dy, dx)
                    steps[n] = term if n not in steps else steps[n] + term
    response = _C3 * steps[0] + _F3 * steps[1] + _E3 * steps[2]
    return ops.sum(ops.abs(response), axis=(1, 2, 3))


def curvature_scores(x, *, mode: str = "volume"):
    """Curvature score of every channel, as :func:`ife_jax.curvature_scores`.

    Args:
      x: (B, H, W, C) or (B, D, H, W, C) features, any real dtype; D, H, W >= 3.
      mode: for volumes, ``"volume"`` (the 3x3x3 kernel) or ``"slices"`` (the 2-D kernel on
        every D slice, summed).

    Returns:
      (B, C) float32 sums of absolute responses to the fixed curvature kernel (no padding).
    """
    _check_rank(x)
    check_choice(mode, CURVATURE_MODES, name="curvature mode")
    x = _float32(x)
    if len(x.shape) == 5:
        if mode == "volume":
            return _curvature_3d(x)
        b, d, h, w, c = ops.shape(x)
        per_slice = curvature_scores(ops.reshape(x, (b * d, h, w, c)))
        return ops.sum(ops.reshape(per_slice, (b, d, c)), axis=1)
    corners = _shift(x, 0, 0) + _shift(x, 0, 2) + _shift(x, 2, 0) + _shift(x, 2, 2)
    edges = _shift(x, 0, 1) + _shift(x, 2, 1) + _shift(x, 1, 0) + _shift(x, 1, 2)
    response = _A * corners + _B * edges + _G * _shift(x, 1, 1)
    return ops.sum(ops.abs(response), axis=(1, 2))


def _quantise(v, lo, span, bins: int):
    """The bin of ``ife_jax.ops.entropy``: the largest k < bins with k * span <= (v - lo) * bins.

    Both products are rounded once in float32, so values on a bin edge land in the same bin on
    every backend; the guess from a division is corrected by the two comparisons.
    """
    t = (v - lo) * float(bins)
    q = ops.clip(ops.floor(t / span), 0, bins - 1)
    q = q + ops.cast((q + 1.0) * span <= t, "float32") - ops.cast(q * span > t, "float32")
    return ops.cast(ops.clip(q, 0, bins - 1), "int32")


def _paper_entropy(x, bins: int):
    shape = ops.shape(x)
    b, c, n = shape[0], shape[-1], 1
    for s in shape[1:-1]:
        n = n * s
    axes = tuple(range(1, len(shape) - 1))
    expand = (slice(None),) + (None,) * len(axes) + (slice(None),)
    finite = ops.all(ops.isfinite(x), axis=axes)
    v = ops.where(ops.isfinite(x), x, 0.0)
    j = _neighbour_mean(v) if len(shape) == 4 else _neighbour_mean_3d(v)
    lo = ops.minimum(ops.min(v, axis=axes), ops.min(j, axis=axes))[expand]
    hi = ops.maximum(ops.max(v, axis=axes), ops.max(j, axis=axes))[expand]
    span = ops.where(hi > lo, hi - lo, 1.0)
    qi, qj = _quantise(v, lo, span, bins), _quantise(j, lo, span, bins)
    keys = ops.sort(_rows(qi * bins + qj), axis=-1)
    counts = _run_counts(keys)
    nlogn = ops.sum(ops.where(counts > 0, counts * ops.log2(ops.maximum(counts, 1.0)), 0.0), -1)
    nf = ops.cast(n, "float32")
    entropy = ops.reshape(ops.log2(nf) - nlogn / nf, (b, c))
    return ops.where(finite, entropy, float("nan"))


def _fused(x):
    """Finite-masked fused pair values ``100 i + j`` and the (B, C) row finiteness.

    The product is rounded before the addition, as in ``ife_jax.ops.entropy``: the identity
    select keeps a compiler from contracting the two into one fused multiply-add.
    """
    finite = ops.all(ops.isfinite(x), axis=(1, 2))
    xc = ops.where(ops.isfinite(x), x, 0.0)
    product = ops.where(xc == xc, 100.0 * xc, xc)
    return product + _neighbour_mean(xc), finite


def reference_histogram(x, *, bins: int = 256):
    """The reference UNet's batch-global 1-D histogram, as :func:`ife_jax.ops.reference_histogram`.

    Returns:
      (B, C, bins) float32 counts per (sample, channel).
    """
    _check_rank(x)
    bins = check_bins(bins)
    x = _float32(x)
    b, h, w, c = ops.shape(x)
    v, finite = _fused(x)
    valid = ops.broadcast_to(finite[:, None, None, :], ops.shape(v))
    lo = ops.min(ops.where(valid, v, float("inf")))
    hi = ops.max(ops.where(valid, v, float("-inf")))
    span = ops.where(hi > lo, hi - lo, 1.0)
    idx = ops.cast(ops.clip(ops.floor(((v - lo) * bins) / span), 0, bins - 1), "int32")
    rows = _rows(idx)
    r = b * c
    flat = rows + ops.arange(r, dtype="int32")[:, None] * bins
    n = h * w
    counts = ops.segment_sum(
        ops.ones((r * n,), dtype="float32"), ops.reshape(flat, (-1,)), num_segments=r * bins
    )
    return ops.reshape(counts, (b, c, bins))


def entropy_scores(x, *, bins: int = 256, mode: str = "paper"):
    """2-D information entropy of every channel, as :func:`ife_jax.entropy_scores`.

    Args:
      x: (B, H, W, C) features, or (B, D, H, W, C) volumes (``"paper"`` only), any real
        dtype; D, H, W >= 3.
      bins: quantisation levels per axis (``"paper"``) or histogram bins (``"reference_hist"``).
      mode: ``"paper"``, ``"reference_hist"`` or ``"reference_unique"``.

    Returns:
      (B, C) float32 scores; NaN for a channel holding NaN or +-Inf.
    """
    _check_rank(x)
    bins = check_bins(bins)
    check_choice(mode, ENTROPY_MODES, name="entropy mode")
    x = _float32(x)
    if mode == "paper":
        return _paper_entropy(x, bins)
    if len(x.shape) == 5:
        raise ValueError(
            f"entropy mode {mode!r} reproduces the authors' 2-D code and has no 3-D form; "
            f"use mode='paper' for the volume of shape {tuple(x.shape)}."
        )
    b, h, w, c = ops.shape(x)
    total = ops.cast((h + 2) * (w + 2), "float32")
    if mode == "reference_hist":
        _, finite = _fused(x)
        entropy = _sum_plogp(reference_histogram(x, bins=bins), total)
    else:
        v, finite = _fused(x)
        counts = _run_counts(ops.sort(_rows(v), axis=-1))
        entropy = ops.reshape(_sum_plogp(counts, total), (b, c))
    return ops.where(finite, entropy, float("nan"))


def top_channels(scores, k: int):
    """Indices of the ``k`` best channels per sample, as :func:`ife_jax.top_channels`.

    The rank of each channel is counted by pairwise comparison (channels ranked before it:
    a better score, or an equal score at a lower index), which is deterministic on every
    backend; non-finite scores rank last and tie among themselves.

    Args:
      scores: (B, C) scores (higher is better).
      k: how many to keep, 1 <= k <= C.

    Returns:
      (B, k) int32 channel indices, best first.
    """
    s = _float32(scores)
    key = ops.where(ops.isfinite(s), 0.0 - s, float("inf")) + 0.0  # + 0.0 folds -0.0 into 0.0
    c = ops.shape(s)[1]
    idx = ops.arange(c, dtype="int32")
    mine, other = key[:, :, None], key[:, None, :]
    lower = idx[None, None, :] < idx[None, :, None]
    before = ops.logical_or(other < mine, ops.logical_and(other == mine, lower))
    rank = ops.sum(ops.cast(before, "int32"), axis=2)  # (B, C)
    hit = ops.cast(rank[:, :, None] == ops.arange(k, dtype="int32")[None, None, :], "int32")
    return ops.sum(hit * idx[None, :, None], axis=1)


def select_channels(x, scores, *, ratio: float):
    """Gathers the top ``k = int(ratio * C)`` channels of each sample, best first.

    Returns:
      ``(selected, indices)``: (B, H, W, k) (or (B, D, H, W, k)) features in ``x``'s dtype and
      (B, k) int32 indices.
    """
    _check_rank(x)
    c = x.shape[-1]
    k = num_selected(c, ratio)
    indices = top_channels(scores, k)
    shape = ops.shape(x)
    index = ops.reshape(indices, (shape[0], *(1 for _ in shape[1:-1]), k))
    gather = ops.broadcast_to(index, (*shape[:-1], k))
    return ops.take_along_axis(x, gather, axis=len(shape) - 1), indices


def channel_scores(
    x,
    *,
    criterion: str = "entropy",
    bins: int = 256,
    entropy_mode: str = "paper",
    curvature_mode: str = "volume",
):
    """(B, C) float32 scores of ``x`` by ``criterion`` (``"entropy"`` or ``"curvature"``)."""
    check_choice(criterion, CRITERIA, name="criterion")
    if criterion == "curvature":
        return curvature_scores(x, mode=curvature_mode)
    return entropy_scores(x, bins=bins, mode=entropy_mode)


def enhance(
    x,
    *,
    criterion: str = "entropy",
    ratio: float = 0.5,
    order: str = "raw_first",
    return_indices: bool = False,
    bins: int = 256,
    entropy_mode: str = "paper",
    curvature_mode: str = "volume",
):
    """Instructive Feature Enhancement in ``keras.ops``, as :func:`ife_jax.enhance`.

    Args:
      x: (B, H, W, C) features or (B, D, H, W, C) volumes of the active backend, any real
        dtype; D, H, W >= 3.
      criterion, ratio, order, return_indices, bins, entropy_mode, curvature_mode: as
        :func:`ife_jax.enhance`.

    Returns:
      (B, H, W, C + k) (or (B, D, H, W, C + k)) tensor in ``x``'s dtype, and the (B, k)
      indices if ``return_indices``.
    """
    check_choice(order, ORDERS, name="order")
    scores = channel_scores(
        x,
        criterion=criterion,
        bins=bins,
        entropy_mode=entropy_mode,
        curvature_mode=curvature_mode,
    )
    selected, indices = select_channels(x, scores, ratio=ratio)
    parts = [x, selected] if order == "raw_first" else [selected, x]
    out = ops.concatenate(parts, axis=-1)
    return (out, indices) if return_indices else out


__all__ = [
    "channel_scores",
    "curvature_scores",
    "enhance",
    "entropy_scores",
    "reference_histogram",
    "select_channels",
    "top_channels",
]
