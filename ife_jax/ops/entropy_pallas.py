"""Paper-mode entropy of 2-D feature maps as a Pallas kernel (the Triton backend for GPUs).

:func:`ife_jax.ops.entropy_scores` calls this on CUDA GPUs for ``mode="paper"`` on (B, H, W, C)
maps; volumes and every other platform keep the XLA path of :mod:`ife_jax.ops.entropy`.

The keys ``i * bins + j`` of every pixel come from the XLA path's own quantisation (one fused
elementwise pass over the features), so both paths count the same integers. The kernel then
works row by row, one (sample, channel) row per step of a persistent program:

1. **build**: an atomic add of 1 into the row's histogram at each pixel's cell;
2. **gather**: each pixel reads its own cell's count ``n_p`` and adds ``log2(N / n_p)``, since
   ``-sum_cells (n / N) log2(n / N) = (1 / N) sum_pixels log2(N / n_p)``; empty cells are never
   visited;
3. **clear**: each pixel stores 0 into its cell, which leaves the histogram all zeros for the
   program's next row, again without a pass over the ``bins * bins`` cells.

Where ``H * W < 65,536`` a count fits 16 bits and two cells share one 32-bit word (cell ``k``
adds ``1 << 16 * (k % 2)`` to word ``k // 2``; the low half never carries into the high one),
which halves the histogram; larger rows use one word per cell. Each program owns one histogram
in device memory; with a few hundred programs they stay in the L2 cache.

Why not 16-bit counts in shared memory, as a CUDA kernel would hold them: the Triton backend
of Pallas offers no scratch (shared) memory and no atomics narrower than 32 bits, and the
Mosaic GPU backend's atomics add into whole references, not at computed indices.

Interpret mode (``interpret=True``, for tests on CPU) runs the same kernel body with one pixel
per block: Pallas's interpreter turns a vector atomic add into a gather and a scatter, which
would drop repeated cells within a block.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

#: Pixels per vector step of the kernel on a GPU.
GPU_BLOCK = 1024
#: Persistent programs (each with its own histogram): about two per SM of an H100 / H200.
GPU_PROGRAMS = 264
#: Largest H * W whose counts fit the 16 bits of a half word.
_HALF_WORD_MAX = 2**16 - 1


def packs_half_words(n: int) -> bool:
    """Whether rows of ``n`` pixels keep two 16-bit counts per 32-bit word."""
    return n <= _HALF_WORD_MAX


def _kernel(
    keys_ref,
    hist_in_ref,
    scores_ref,
    hist_ref,
    *counts_ref,
    rows,
    n,
    block,
    programs,
    packed,
    interpret,
):
    """One persistent program: rows ``p, p + programs, ...`` of the (rows, n_padded) keys."""
    del hist_in_ref  # aliased with hist_ref: the zeroed histograms
    p = pl.program_id(0)
    steps = keys_ref.shape[1] // block
    sentinel = hist_ref.shape[1] - 1  # a spare word that padded pixels write into

    def sync():
        if not interpret:  # the interpreter runs a program's operations in order
            plgpu.debug_barrier()

    def word_and_unit(keys):
        if packed:
            word = lax.shift_right_logical(keys, 1)
            shift = lax.shift_left(keys & 1, 4)
            return word, shift, lax.shift_left(jnp.ones_like(keys), shift)
        return keys, None, jnp.ones_like(keys)

    def block_keys(r, s):
        keys = keys_ref[r, pl.ds(s * block, block)]
        valid = keys >= 0
        return jnp.where(valid, keys, 2 * sentinel if packed else sentinel), valid

    def row(t, carry):
        r = p + t * programs

        @pl.when(r < rows)
        def _():
            def build(s, c):
                keys, _ = block_keys(r, s)
                word, _, unit = word_and_unit(keys)
                plgpu.atomic_add(hist_ref, (p, word), unit)
                return c

            lax.fori_loop(0, steps, build, 0)
            sync()

            def gather(s, acc):
                keys, valid = block_keys(r, s)
                word, shift, _ = word_and_unit(keys)
                # An atomic add of 0 reads the count where the build's atomics left it.
                value = plgpu.atomic_add(hist_ref, (p, word), jnp.zeros_like(word))
                if packed:
                    value = lax.shift_right_logical(value, shift) & 0xFFFF
                if counts_ref:
                    counts_ref[0][r, pl.ds(s * block, block)] = jnp.where(valid, value, 0)
                count = jnp.where(valid, value, n).astype(jnp.float32)
                return acc + jnp.log2(float(n) / count)

            acc = lax.fori_loop(0, steps, gather, jnp.zeros((block,), jnp.float32))
            scores_ref[pl.ds(r, 1)] = (jnp.sum(acc) / float(n))[None]
            sync()

            def clear(s, c):
                keys, _ = block_keys(r, s)
                word, _, _ = word_and_unit(keys)
                hist_ref[p, word] = jnp.zeros_like(word)
                return c

            lax.fori_loop(0, steps, clear, 0)
            sync()

        return carry

    lax.fori_loop(0, pl.cdiv(rows, programs), row, 0)


@functools.partial(
    jax.jit, static_argnames=("n", "cells", "block", "programs", "interpret", "with_counts")
)
def row_entropy(
    keys: jax.Array,
    *,
    n: int,
    cells: int,
    block: int = GPU_BLOCK,
    programs: int = GPU_PROGRAMS,
    interpret: bool = False,
    with_counts: bool = False,
):
    """``(1 / n) sum_p log2(n / count(cell of p))`` for every row of (R, n) histogram keys.

    Args:
      keys: (R, n) int32 cell of each pixel, in ``[0, cells)``.
      n: pixels per row (H * W).
      cells: histogram cells (``bins * bins``).
      block: pixels per vector step (1 in interpret mode, see the module docstring).
      programs: persistent programs, each holding one histogram.
      interpret: run in Pallas's interpret mode (any platform).
      with_counts: also return the (R, n) int32 count of each pixel's cell.

    Returns:
      (R,) float32 entropies in bits, and the counts if ``with_counts``.
    """
    r = keys.shape[0]
    if keys.shape != (r, n) or keys.dtype != jnp.int32:
        raise ValueError(f"keys must be ({r}, {n}) int32; got {keys.shape} {keys.dtype}.")
    if interpret and block != 1:
        raise ValueError(f"interpret mode counts one pixel per block; got block={block}.")
    packed = packs_half_words(n)
    padded = pl.cdiv(n, block) * block
    if padded != n:  # -1 marks padding: written to a spare word, left out of the sum
        keys = jnp.pad(keys, ((0, 0), (0, padded - n)), constant_values=-1)
    programs = max(1, min(programs, r))
    words = (cells + 1) // 2 if packed else cells
    hist = jnp.zeros((programs, words + 1), jnp.int32)
    out_shape = [
        jax.ShapeDtypeStruct((r,), jnp.float32),
        jax.ShapeDtypeStruct(hist.shape, jnp.int32),
    ]
    if with_counts:
        out_shape.append(jax.ShapeDtypeStruct((r, padded), jnp.int32))
    kernel = functools.partial(
        _kernel,
        rows=r,
        n=n,
        block=block,
        programs=programs,
        packed=packed,
        interpret=interpret,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(programs,),
        input_output_aliases={1: 1},
        interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=8),
    )(keys, hist)
    if with_counts:
        return outs[0], outs[2][:, :n]
    return outs[0]


def supported(shape: tuple[int, ...], bins: int) -> bool:
    """Whether the kernel handles (B, H, W, C) maps with ``bins`` levels (2-D, 32-bit keys)."""
    return len(shape) == 4 and bins * bins < 2**31 - 2 and math.prod(shape[1:3]) < 2**31
