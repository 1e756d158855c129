"""2-D information entropy score of each feature channel (the paper's eq. 2 and Algorithm 1).

Three modes share one entry point, :func:`entropy_scores`:

``"paper"`` (default)
  For every pixel, ``i`` is its value and ``j`` the mean of its 8 neighbours (zero padding 1).
  Both are quantised to ``bins`` levels over one common range per (sample, channel), the
  smallest interval ``[lo, lo + span]`` holding every ``i`` and ``j`` of that channel (as
  ``histc`` over the pair does): the bin of ``v`` is the largest ``k < bins`` with
  ``k * span <= (v - lo) * bins``, products rounded once in float32. The joint ``bins x bins``
  histogram of ``(i, j)`` is built with a scatter-add on flat keys ``i * bins + j``;
  ``E = -sum p log2 p`` with ``p = count / (H * W)``.

``"reference_hist"``
  The authors' UNet code: the pair fused into one scalar ``v = 100 * i + j``, a 1-D histogram of
  ``bins`` bins whose range is the min / max of ``v`` over the **whole batch**,
  ``bin = floor((v - min) * bins / (max - min))`` in float32 clamped to ``bins - 1``, and
  ``p = count / ((H + 2) (W + 2))``. A channel's score therefore depends on the other samples.

``"reference_unique"``
  The authors' DeepLabV3+ / SINetV2 code: counts of exactly equal fused values ``v`` (no bins),
  ``p = count / ((H + 2) (W + 2))``. Continuous features give nearly all-distinct values and
  therefore nearly equal scores; only repeated values (ReLU zeros, constants) separate channels.

Volumes (B, D, H, W, C) are scored by ``"paper"`` only: ``j`` is the mean of a voxel's 26
neighbours (zero padding 1), ``(window sum - centre) * fl(1/26)``, with the 3x3x3 window summed
separably in float32 (the three values along W, then those sums along H, then along D, each
left to right); quantisation, common range and histogram are the 2-D ones, and
``p = count / (D * H * W)``.

What "reference" guarantees. Exact: the reference's golden cases (scores, and the selected
channels wherever the golden file flags no tie) and ``reference_hist``'s histogram counts.
Not exact on every input: torch sums the 3x3 window in another order near the last rows, so
about 0.6% of the fused values ``v`` of ReLU maps differ from the reference's by one float32 ulp;
``reference_unique`` counts distinct values, so such a row can get one distinct value fewer or
more than the reference's (its score moves slightly). Among equal scores the selection keeps
the lower channel index first, while ``torch.topk``'s order of ties is unspecified.

Normalising by a constant other than the pixel count is a monotone transform of the entropy, so
it never changes which channels are selected.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ife_jax.ops import entropy_pallas
from ife_jax.ops._checks import ENTROPY_MODES, as_float32, check_bins, check_choice, check_features

#: Default bound on the bytes of histogram and per-chunk temporaries that entropy holds at once.
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: Rows (sample, channel pairs) per chunk on CPU, where small chunks keep the histogram in cache.
_CPU_CHUNK_ROWS = 8


def neighbour_sum(x: jax.Array) -> jax.Array:
    """Sum of each pixel's 3x3 window with zero padding 1, over axes 1 and 2.

    The nine shifted copies are added in raster order (top-left first). This matches the
    reference implementation's float32 sums on its golden cases; near the last rows torch sums
    the window in another order, so about 0.6% of the fused values of ReLU maps differ from
    the reference's by one ulp (see the module docstring).
    """
    h, w = x.shape[1], x.shape[2]
    pad = [(0, 0)] * x.ndim
    pad[1], pad[2] = (1, 1), (1, 1)
    p = jnp.pad(x, pad)
    total = None
    for dy in range(3):
        for dx in range(3):
            s = lax.slice_in_dim(lax.slice_in_dim(p, dy, dy + h, axis=1), dx, dx + w, axis=2)
            total = s if total is None else total + s
    return total


def neighbour_sum_3d(x: jax.Array) -> jax.Array:
    """Sum of each voxel's 3x3x3 window with zero padding 1, over axes 1, 2 and 3.

    Summed separably in float32: the three values along axis 3 (W) left to right, then three
    such sums along axis 2 (H), then along axis 1 (D); 6 additions per voxel instead of 26.
    """
    total = x
    for axis in (3, 2, 1):
        n = total.shape[axis]
        pad = [(0, 0)] * total.ndim
        pad[axis] = (1, 1)
        p = jnp.pad(total, pad)
        total = (
            lax.slice_in_dim(p, 0, n, axis=axis)
            + lax.slice_in_dim(p, 1, n + 1, axis=axis)
            + lax.slice_in_dim(p, 2, n + 2, axis=axis)
        )
    return total


#: 1/26 rounded to float32, the factor that turns the 26 neighbours' sum into their mean.
_INV_26 = float(np.float32(1.0 / 26.0))


def neighbour_mean(x: jax.Array, *, volume: bool = False) -> jax.Array:
    """j: the mean of each pixel's 8 neighbours, ``(window sum - centre) / 8``, zero padding.

    With ``volume=True`` the mean of each voxel's 26 neighbours over axes 1-3,
    ``(window sum - centre) * fl(1/26)`` (a multiplication by the float32 constant, so every
    backend rounds it the same way).
    """
    if volume:
        return (neighbour_sum_3d(x) - x) * _INV_26
    return (neighbour_sum(x) - x) / 8.0


def _fuse(x: jax.Array) -> jax.Array:
    """``100 * x + neighbour_mean(x)`` rounded after the product, as the reference computes it.

    XLA contracts a product feeding an addition into one fused multiply-add, which rounds once
    instead of twice and moves a quarter of the values by one ulp, enough to change histogram
    bins and exact-value counts. Routing the product through a select that is the identity for
    every input (NaN included) keeps the two roundings.
    """
    product = 100.0 * x
    product = jnp.where(x == x, product, x)
    return product + neighbour_mean(x)


@jax.jit
def fused_pair_values(x: jax.Array) -> jax.Array:
    """The reference's fused pair ``100 * i + j`` for every pixel, float32, (B, H, W, C)."""
    _check_2d(check_features(x), "fused_pair_values")
    return _fuse(as_float32(x))


def _check_2d(shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    if len(shape) != 4:
        raise ValueError(f"{name} takes (B, H, W, C) feature maps; got shape {shape}.")
    return shape


def _row_bytes(spatial: tuple[int, ...], bins: int) -> int:
    """Bytes one (sample, channel) row needs: histogram + row, j, keys, counts, slack."""
    return 4 * bins * bins + 6 * 4 * math.prod(spatial)


def _chunk_rows(spatial: tuple[int, ...], bins: int, budget: int) -> int:
    """How many (sample, channel) rows fit the memory budget at once."""
    return max(1, budget // _row_bytes(spatial, bins))


def _largest_divisor_at_most(n: int, cap: int) -> int:
    cap = max(1, min(n, cap))
    return next(d for d in range(cap, 0, -1) if n % d == 0)


def _map_row_blocks(fn, x: jax.Array, rows: int) -> jax.Array:
    """Applies ``fn`` to blocks of ``rows`` (sample, channel) rows and reassembles (B, C).

    ``fn`` takes a (R, H, W) (or (R, D, H, W)) block of channel maps and returns (R,). Blocks
    are cut out of the channels-last array with ``dynamic_slice`` inside ``lax.map``, so no
    full-size copy of ``x`` (transposed or otherwise) is ever made and the temporaries stay
    within one block.
    """
    b, *spatial, c = x.shape
    if rows >= c:
        cg, sb = c, _largest_divisor_at_most(b, rows // c)
    else:
        cg, sb = _largest_divisor_at_most(c, rows), 1
    groups, nb = c // cg, b // sb
    channels_first = (0, x.ndim - 1, *range(1, x.ndim - 1))

    def block(i):
        b0, c0 = (i // groups) * sb, (i % groups) * cg
        start = (b0, *(0 for _ in spatial), c0)
        xs = lax.dynamic_slice(x, start, (sb, *spatial, cg))
        # The barriers keep XLA from fusing the transpose and stencil into the scatter, which
        # costs several times more on CPU than materialising each small stage.
        rows_ = lax.optimization_barrier(
            jnp.transpose(xs, channels_first).reshape(sb * cg, *spatial)
        )
        return fn(rows_)

    out = lax.map(block, jnp.arange(nb * groups))  # (nb * groups, sb * cg)
    return out.reshape(nb, groups, sb, cg).transpose(0, 2, 1, 3).reshape(b, c)


def _quantise(v: jax.Array, lo: jax.Array, span: jax.Array, bins: int) -> jax.Array:
    """Bin of each value: the largest ``k < bins`` with ``k * span <= (v - lo) * bins``.

    Both products are rounded once in float32, so the bin of a value lying exactly on an edge
    (common after a ReLU: a neighbour mean of max/8 sits on edge bins/8) is the same on every
    backend. A plain ``floor((v - lo) * bins / span)`` is not: XLA turns a division by a
    broadcast scalar into a multiplication by its reciprocal, rounding twice, and backends
    differ in how they round the reciprocal. A first guess from that reciprocal is off by at
    most one and is corrected by the two comparisons.
    """
    t = (v - lo) * float(bins)
    q = jnp.clip(jnp.floor(t * (1.0 / span)), 0, bins - 1)
    q = q + ((q + 1.0) * span <= t) - (q * span > t)
    return jnp.clip(q, 0, bins - 1).astype(jnp.int32)


def _spatial_keys(x: jax.Array, bins: int, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Cell ``i * bins + j`` of every pixel of ``x``, whose spatial axes are ``axes``.

    One range per position of the other axes (a (sample, channel) row). Returns int32 keys of
    ``x``'s shape in ``[0, bins * bins)`` (non-finite values counted as 0) and the flag, of
    ``x``'s shape without ``axes``, of rows holding only finite values.
    """
    finite = jnp.all(jnp.isfinite(x), axis=axes)
    v = jnp.where(jnp.isfinite(x), x, 0.0)
    j = neighbour_mean(v, volume=len(axes) == 3)
    lo = jnp.expand_dims(jnp.minimum(v.min(axis=axes), j.min(axis=axes)), axes)
    hi = jnp.expand_dims(jnp.maximum(v.max(axis=axes), j.max(axis=axes)), axes)
    span = jnp.where(hi > lo, hi - lo, 1.0)
    return _quantise(v, lo, span, bins) * bins + _quantise(j, lo, span, bins), finite


def _paper_keys(rows: jax.Array, bins: int) -> tuple[jax.Array, jax.Array]:
    """Cell ``i * bins + j`` of every pixel of a (R, H, W) or (R, D, H, W) block, and finiteness.

    Returns (R, N) int32 keys in ``[0, bins * bins)`` (non-finite values counted as 0) and the
    (R,) bool flag of rows holding only finite values.
    """
    keys, finite = _spatial_keys(rows, bins, tuple(range(1, rows.ndim)))
    return keys.reshape(rows.shape[0], -1), finite


def _row_entropy(keys: jax.Array, cells: int) -> jax.Array:
    """Entropy of the cells of each row of (R, N) int32 keys in ``[0, cells)``, float32 (R,)."""
    r, n = keys.shape
    keys = keys + (jnp.arange(r, dtype=jnp.int32) * cells)[:, None]
    keys = lax.optimization_barrier(keys)
    hist = jnp.zeros(r * cells, jnp.int32).at[keys.reshape(-1)].add(1, mode="promise_in_bounds")
    # sum_cells n log n == sum_pixels log n(cell of the pixel): gather instead of a pass over
    # all bins*bins cells, most of which are empty.
    own = hist[keys].astype(jnp.float32)
    own = lax.optimization_barrier(own)
    return jnp.mean(jnp.log2(float(n) / own), axis=1)


def _paper_block(rows: jax.Array, bins: int) -> jax.Array:
    """Paper entropy of each row of a (R, H, W) or (R, D, H, W) block; NaN for non-finite rows."""
    keys, finite = _paper_keys(rows, bins)
    return jnp.where(finite, _row_entropy(keys, bins * bins), jnp.nan)


def _cpu_sample_bytes(spatial: tuple[int, ...], channels: int) -> int:
    """Bytes :func:`_paper_cpu` counts per sample of a group: its int32 keys twice (channels-last
    and as rows) and, conservatively, four float32 temporaries of the key computation (values,
    neighbour means, padded copy, keys being built), which exist for one sample at a time."""
    return (2 + 4) * 4 * math.prod(spatial) * channels


def _paper_cpu(x: jax.Array, bins: int, rows: int, budget: int) -> jax.Array:
    """Paper entropy of (B, H, W, C) maps, laid out for CPUs; the same counts as the XLA path.

    The keys of a whole sample are computed channels-last in one elementwise pass (vectorised
    along C), then the keys of a group of samples are transposed at once into (sample,
    channel) rows, and only the histograms run in blocks of ``rows`` rows. Cutting blocks of a
    few channels out of the channels-last map, as :func:`_map_row_blocks` does, reads whole
    cache lines for a few of their values and costs more than the histograms themselves.
    Samples are processed in groups whose keys fit ``budget``; the caller checks that one does.
    """
    b, h, w, c = x.shape
    n, cells = h * w, bins * bins
    sb = _largest_divisor_at_most(b, budget // _cpu_sample_bytes((h, w), c))
    r = _largest_divisor_at_most(sb * c, rows)

    def group(xs):  # (sb, H, W, C) -> (sb, C)
        # A loop over samples materialises the keys channels-last; computed in one fusion with
        # the transpose below, the elementwise work would read the map with a stride of C.
        keys, finite = lax.map(lambda s: _spatial_keys(s[None], bins, (1, 2)), xs)
        keys = jnp.transpose(keys.reshape(sb, n, c), (0, 2, 1)).reshape(sb * c, n)
        # Blocks are contiguous row ranges of the 2-D array (a transpose written straight into
        # a 3-D (blocks, rows, N) array is several times slower on CPU).
        entropy = lax.map(
            lambda i: _row_entropy(lax.dynamic_slice_in_dim(keys, i * r, r), cells),
            jnp.arange(sb * c // r),
        )
        return jnp.where(finite.reshape(sb, c), entropy.reshape(sb, c), jnp.nan)

    return lax.map(group, x.reshape(b // sb, sb, h, w, c)).reshape(b, c)


def _paper_pallas(x: jax.Array, bins: int, **kernel_options) -> jax.Array:
    """Paper entropy of (B, H, W, C) maps by the Pallas kernel of :mod:`entropy_pallas`."""
    b, h, w, c = x.shape
    rows = jnp.transpose(x, (0, 3, 1, 2)).reshape(b * c, h, w)
    keys, finite = _paper_keys(rows, bins)
    entropy = entropy_pallas.row_entropy(keys, n=h * w, cells=bins * bins, **kernel_options)
    return jnp.where(finite, entropy, jnp.nan).reshape(b, c)


#: Set to 1 to score paper-mode entropy with the Pallas kernel on CUDA GPUs. Off by default: the
#: kernel is tested in Pallas's interpreter and lowers to Triton, but has not yet been measured
#: against the XLA path on a GPU.
PALLAS_ENV = "IFE_JAX_PALLAS_ENTROPY"


def _pallas_available(shape: tuple[int, ...], bins: int) -> bool:
    """Whether the CUDA branch uses the kernel: asked for by ``IFE_JAX_PALLAS_ENTROPY=1`` (read
    when the function is traced), supported for the shape, and compute capability >= 8.0."""
    if os.environ.get(PALLAS_ENV) != "1" or not entropy_pallas.supported(shape, bins):
        return False
    try:
        gpus = jax.devices("cuda")
    except RuntimeError:
        return False
    capability = getattr(gpus[0], "compute_capability", "0")
    return float(capability) >= 8.0


def _unique_block(rows: jax.Array) -> jax.Array:
    """Entropy of exact distinct fused values per row, p = count / ((H+2)(W+2))."""
    r, h, w = rows.shape
    finite = jnp.all(jnp.isfinite(rows), axis=(1, 2))
    v = jnp.where(jnp.isfinite(rows), rows, 0.0)
    fused = _fuse(v).reshape(r, h * w)
    s = jnp.sort(fused, axis=1)
    new = jnp.concatenate([jnp.ones((r, 1), bool), s[:, 1:] != s[:, :-1]], axis=1)
    ids = jnp.cumsum(new, axis=1) - 1
    counts = jax.vmap(lambda i: jnp.zeros(h * w, jnp.float32).at[i].add(1.0))(ids)
    p = counts / float((h + 2) * (w + 2))
    entropy = -jnp.sum(jnp.where(counts > 0, p * jnp.log2(jnp.where(counts > 0, p, 1.0)), 0.0), 1)
    return jnp.where(finite, entropy, jnp.nan)


@functools.partial(jax.jit, static_argnames=("bins",))
def reference_histogram(x: jax.Array, *, bins: int = 256):
    """The reference UNet's batch-global 1-D histogram of fused values.

    Args:
      x: (B, H, W, C) features.
      bins: number of bins (the reference uses 256).

    Returns:
      ``(counts, lo, hi)``: (B, C, bins) float32 counts per (sample, channel), and the range
      (the min and max of the finite fused values over the whole batch). Rows holding
      non-finite values take no part in the range and their counts are meaningless.
    """
    b, h, w, c = _check_2d(check_features(x), "reference_histogram")
    bins = check_bins(bins)
    x = as_float32(lax.stop_gradient(x))
    row_finite = jnp.all(jnp.isfinite(x), axis=(1, 2), keepdims=True)
    xc = jnp.where(jnp.isfinite(x), x, 0.0)
    v = _fuse(xc)
    valid = jnp.broadcast_to(row_finite, v.shape)
    lo = jnp.min(jnp.where(valid, v, jnp.inf))
    hi = jnp.max(jnp.where(valid, v, -jnp.inf))
    span = jnp.where(hi > lo, hi - lo, 1.0)
    # The reference divides every value by the range, rounding once. XLA would rewrite a
    # division by a broadcast scalar into a multiplication by its reciprocal (rounding twice,
    # one ulp off for a third of the values); the barrier keeps the true division.
    span = lax.optimization_barrier(jnp.broadcast_to(span, v.shape))
    idx = jnp.clip(jnp.floor(((v - lo) * bins) / span), 0, bins - 1).astype(jnp.int32)
    idx = jnp.transpose(idx, (0, 3, 1, 2)).reshape(b * c, h * w)
    flat = idx + (jnp.arange(b * c, dtype=jnp.int32) * bins)[:, None]
    counts = jnp.zeros(b * c * bins, jnp.float32).at[flat.reshape(-1)].add(1.0)
    return counts.reshape(b, c, bins), lo, hi


def _reference_hist_scores(x: jax.Array, bins: int) -> jax.Array:
    _, h, w, _ = x.shape
    counts, _, _ = reference_histogram(x, bins=bins)
    p = counts / float((h + 2) * (w + 2))
    # The reference clamps p at 1e-40 before the log; that is a float32 denormal, flushed to
    # zero by XLA, so empty bins are masked out instead (their term is 0 either way).
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    finite = jnp.all(jnp.isfinite(x), axis=(1, 2))
    return jnp.where(finite, entropy, jnp.nan)


@functools.partial(jax.jit, static_argnames=("bins", "mode", "memory_budget_bytes", "chunk_rows"))
def entropy_scores(
    x: jax.Array,
    *,
    bins: int = 256,
    mode: str = "paper",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    chunk_rows: int | None = None,
) -> jax.Array:
    r"""2-D information entropy of every channel: :math:`E = -\sum_{i,j} p_{ij}\log_2 p_{ij}`.

    See the module docstring for the three modes. Scores are computed in float32 whatever
    ``x``'s dtype and carry no gradient. For a volume (B, D, H, W, C), ``i`` is a voxel and
    ``j`` the mean of its 26 neighbours (``"paper"`` mode only), ``p = count / (D H W)``.

    Args:
      x: (B, H, W, C) or (B, D, H, W, C) features, NHWC / NDHWC, any real dtype;
        D, H, W >= 3.
      bins: quantisation levels per axis (``"paper"``) or histogram bins (``"reference_hist"``).
      mode: ``"paper"``, ``"reference_hist"`` or ``"reference_unique"``.
      memory_budget_bytes: ``"paper"`` builds its histograms for a few (sample, channel) rows at
        a time (``lax.map`` over blocks) so that histograms and per-block temporaries stay within
        this many bytes at any batch size. Results do not depend on it.
      chunk_rows: rows per block, overriding the budget (``None``: from the budget, and at most
        8 when lowered for CPU, where small blocks keep the histogram in cache). For volumes
        it is capped by the budget. Giving it selects the XLA path on every platform. On CPU,
        (B, H, W, C) maps compute the keys of whole samples channels-last and transpose them
        once into rows (groups of samples within the budget), and only the histograms run in
        blocks; when one sample's keys exceed the budget, blocks are cut from the map.

    On CUDA GPUs of compute capability 8.0 or more, ``"paper"`` mode on (B, H, W, C) maps runs
    the Pallas kernel of :mod:`ife_jax.ops.entropy_pallas` (same integer counts, scores equal
    up to float summation order); volumes, other modes and other platforms run XLA.

    Returns:
      (B, C) float32 scores. A channel holding NaN or +-Inf scores NaN and is left out of the
      batch-global range of ``"reference_hist"``; the other channels' scores are unaffected.

    Raises:
      ValueError: bad shape or dtype of ``x``, ``bins < 2``, unknown ``mode``, a
        non-positive budget or chunk size; for a volume, a reference mode or a single
        (sample, channel) row needing more than ``memory_budget_bytes``.

    Example:
      >>> entropy_scores(jax.random.normal(jax.random.key(0), (2, 16, 16, 8))).shape
      (2, 8)
      >>> entropy_scores(jax.random.normal(jax.random.key(0), (2, 5, 16, 16, 8))).shape
      (2, 8)
    """
    shape = check_features(x)
    spatial = shape[1:-1]
    bins = check_bins(bins)
    check_choice(mode, ENTROPY_MODES, name="entropy mode")
    if memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be positive; got {memory_budget_bytes!r}.")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer or None; got {chunk_rows!r}.")
    if shape[0] == 0:  # an empty batch has no rows to map over
        return jnp.zeros((0, shape[-1]), jnp.float32)
    if len(spatial) == 3:
        return _volume_entropy_scores(x, shape, bins, mode, memory_budget_bytes, chunk_rows)
    x = lax.stop_gradient(as_float32(x))
    if mode == "reference_hist":
        return _reference_hist_scores(x, bins)
    if mode == "reference_unique":
        return _map_row_blocks(_unique_block, x, chunk_rows or 8)

    def run(rows):
        return lambda x_: _map_row_blocks(lambda r: _paper_block(r, bins), x_, rows)

    def run_cpu(rows):
        keys_budget = memory_budget_bytes - rows * _row_bytes(spatial, bins)
        if keys_budget < _cpu_sample_bytes(spatial, shape[-1]):
            return run(rows)  # not even one sample's keys fit: row blocks of the map
        return functools.partial(_paper_cpu, bins=bins, rows=rows, budget=keys_budget)

    budget_rows = _chunk_rows(spatial, bins, memory_budget_bytes)
    if chunk_rows is not None:
        return lax.platform_dependent(x, cpu=run_cpu(chunk_rows), default=run(chunk_rows))
    xla = run(budget_rows)
    cuda = functools.partial(_paper_pallas, bins=bins) if _pallas_available(shape, bins) else xla
    return lax.platform_dependent(
        x, cpu=run_cpu(min(budget_rows, _CPU_CHUNK_ROWS)), cuda=cuda, default=xla
    )


def _volume_entropy_scores(x, shape, bins, mode, budget, chunk_rows):
    """Paper entropy of every (sample, channel) of a (B, D, H, W, C) volume, within ``budget``."""
    if mode != "paper":
        raise ValueError(
            f"entropy mode {mode!r} reproduces the authors' 2-D code and has no 3-D form; "
            f"use mode='paper' for the volume of shape {shape}."
        )
    need = _row_bytes(shape[1:-1], bins)
    if need > budget:
        raise ValueError(
            f"One (sample, channel) row of the volume of shape {shape} needs {need} bytes "
            f"(D*H*W = {math.prod(shape[1:-1])} voxels, {bins}x{bins} histogram), more than "
            f"memory_budget_bytes={budget}; raise the budget or crop the volume."
        )
    budget_rows = budget // need
    x = lax.stop_gradient(as_float32(x))

    def run(rows):
        return lambda x_: _map_row_blocks(lambda r: _paper_block(r, bins), x_, rows)

    if chunk_rows is not None:
        return run(min(chunk_rows, budget_rows))(x)
    return lax.platform_dependent(
        x, cpu=run(min(budget_rows, _CPU_CHUNK_ROWS)), default=run(budget_rows)
    )
