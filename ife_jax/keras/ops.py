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
active backend.
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
from ife_jax.ops.curvature import _A, _B, _G


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


def _check_rank(x) -> None:
    if len(x.shape) != 4:
        raise ValueError(f"x must be a (B, H, W, C) NHWC tensor; got shape {tuple(x.shape)}.")


def _float32(x):
    return ops.stop_gradient(ops.cast(x, "float32"))


def _rows(x):
    """(B, H, W, C) -> (B * C, H * W): one row per (sample, channel)."""
    b, h, w, c = ops.shape(x)
    return ops.reshape(ops.transpose(x, (0, 3, 1, 2)), (b * c, h * w))


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


def curvature_scores(x):
    """Curvature score of every channel, as :func:`ife_jax.curvature_scores`.

    Args:
      x: (B, H, W, C) features, any real dtype; H, W >= 3.

    Returns:
      (B, C) float32 sums of absolute responses to the fixed 3x3 curvature kernel (no padding).
    """
    _check_rank(x)
    x = _float32(x)
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
    b, h, w, c = ops.shape(x)
    n = h * w
    finite = ops.all(ops.isfinite(x), axis=(1, 2))
    v = ops.where(ops.isfinite(x), x, 0.0)
    j = _neighbour_mean(v)
    lo = ops.minimum(ops.min(v, axis=(1, 2)), ops.min(j, axis=(1, 2)))[:, None, None, :]
    hi = ops.maximum(ops.max(v, axis=(1, 2)), ops.max(j, axis=(1, 2)))[:, None, None, :]
    span = ops.where(hi > lo, hi - lo, 1.0)
    qi, qj = _quantise(v, lo, span, bins), _quantise(j, lo, span, bins)
    keys = ops.sort(_rows(qi * bins + qj), axis=-1)
    counts = _run_counts(keys)
    nlogn = ops.sum(ops.where(counts > 0, counts * ops.log2(ops.maximum(counts, 1.0)), 0.0), -1)
    nf = ops.cast(n, "float32")
    entropy = ops.reshape(ops.log2(nf) - nlogn / nf, (b, c))
    return ops.where(finite, entropy, float("nan"))


def _fused(x):
    """Finite-masked fused pair values ``100 i + j`` and the (B, C) row finiteness."""
    finite = ops.all(ops.isfinite(x), axis=(1, 2))
    xc = ops.where(ops.isfinite(x), x, 0.0)
    return 100.0 * xc + _neighbour_mean(xc), finite


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
      x: (B, H, W, C) features, any real dtype; H, W >= 3.
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
      ``(selected, indices)``: (B, H, W, k) features in ``x``'s dtype and (B, k) int32 indices.
    """
    _check_rank(x)
    c = x.shape[-1]
    k = num_selected(c, ratio)
    indices = top_channels(scores, k)
    b, h, w, _ = ops.shape(x)
    gather = ops.broadcast_to(indices[:, None, None, :], (b, h, w, k))
    return ops.take_along_axis(x, gather, axis=3), indices


def channel_scores(x, *, criterion: str = "entropy", bins: int = 256, entropy_mode: str = "paper"):
    """(B, C) float32 scores of ``x`` by ``criterion`` (``"entropy"`` or ``"curvature"``)."""
    check_choice(criterion, CRITERIA, name="criterion")
    if criterion == "curvature":
        return curvature_scores(x)
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
):
    """Instructive Feature Enhancement in ``keras.ops``, as :func:`ife_jax.enhance`.

    Args:
      x: (B, H, W, C) features of the active backend, any real dtype; H, W >= 3.
      criterion, ratio, order, return_indices, bins, entropy_mode: as :func:`ife_jax.enhance`.

    Returns:
      (B, H, W, C + k) tensor in ``x``'s dtype, and the (B, k) indices if ``return_indices``.
    """
    check_choice(order, ORDERS, name="order")
    scores = channel_scores(x, criterion=criterion, bins=bins, entropy_mode=entropy_mode)
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
