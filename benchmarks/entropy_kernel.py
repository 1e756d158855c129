"""Paper entropy on a GPU: the Pallas kernel against the XLA path, and whether they agree.

For each shape: milliseconds of ``entropy_scores`` (the kernel on CUDA GPUs, with
``IFE_JAX_PALLAS_ENTROPY=1`` set) and of the XLA path
(forced by ``chunk_rows``), the largest relative score difference, and whether the top half of
the channels selected per sample is the same. The default shapes are the issue's targets:
(32, 112, 112, 64), and UNet+E's two IFE inputs (32, 112, 112, 128) and (32, 56, 56, 256).

    IFE_JAX_PALLAS_ENTROPY=1 python benchmarks/entropy_kernel.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ife_jax.ops import entropy_scores, top_channels
from ife_jax.ops.entropy import DEFAULT_MEMORY_BUDGET, _chunk_rows

SHAPES = ((32, 112, 112, 64), (32, 112, 112, 128), (32, 56, 56, 256))


def timed(fn, x, repeats):
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in SHAPES))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args(argv)
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {args.dtype} features")
    print(f"{'shape':<22}{'kernel ms':>11}{'XLA ms':>9}{'max rel diff':>14}{'same top-k':>12}")
    for text in args.shapes.split(";"):
        shape = tuple(int(v) for v in text.split(","))
        x = jax.nn.relu(jax.random.normal(jax.random.key(0), shape)).astype(args.dtype)
        rows = _chunk_rows(shape[1:3], 256, DEFAULT_MEMORY_BUDGET)
        kernel = jax.jit(entropy_scores)
        xla = jax.jit(lambda v, r=rows: entropy_scores(v, chunk_rows=r))
        a, b = kernel(x), xla(x)
        diff = float(jnp.max(jnp.abs(a - b) / jnp.maximum(jnp.abs(b), 1e-30)))
        k = shape[-1] // 2
        same = bool(np.array_equal(top_channels(a, k), top_channels(b, k)))
        print(
            f"{str(shape):<22}{timed(kernel, x, args.repeats):>11.3f}"
            f"{timed(xla, x, args.repeats):>9.3f}{diff:>14.2e}{str(same):>12}"
        )


if __name__ == "__main__":
    main()
