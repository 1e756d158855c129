"""Time and memory of the IFE scoring ops; prints a table.

    python benchmarks/ife_ops.py              # the main case and a one-axis-at-a-time sweep
    python benchmarks/ife_ops.py --quick      # the main case only
    python benchmarks/ife_ops.py --shape 32,112,112,64 --ops entropy_paper

Median wall time of >= 5 jitted runs after a warm-up (``block_until_ready``), and the extra
memory XLA reserves for temporaries (``memory_analysis().temp_size_in_bytes``) beyond the
input and output buffers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from ife_jax.ops import curvature_scores, enhance, entropy_scores

OPS = {
    "curvature": lambda x: curvature_scores(x),
    "curvature_conv": lambda x: curvature_scores(x, method="conv"),
    "entropy_paper": lambda x: entropy_scores(x),
    "entropy_reference_hist": lambda x: entropy_scores(x, mode="reference_hist"),
    "enhance_entropy": lambda x: enhance(x, criterion="entropy", ratio=0.5),
}
MAIN = (8, 112, 112, 64)


def measure(op, shape, repeats):
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), shape, jnp.float32))
    fn = jax.jit(OPS[op])
    compiled = fn.lower(x).compile()
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem is not None else float("nan")
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, temp / 2**20, x.nbytes / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="main case only")
    p.add_argument("--shape", help="one B,H,W,C shape instead of the default set")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated ops")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    ops = args.ops.split(",")
    if args.shape:
        shapes = [tuple(int(s) for s in args.shape.split(","))]
    elif args.quick:
        shapes = [MAIN]
    else:
        b, h, w, c = MAIN
        shapes = [MAIN]
        shapes += [(bb, h, w, c) for bb in (1, 32)]
        shapes += [(b, s, s, c) for s in (56, 224)]
        shapes += [(b, h, w, cc) for cc in (32, 256)]
    dev = jax.devices()[0]
    print(f"device: {dev.platform} ({dev.device_kind}), jax {jax.__version__}")
    head = f"{'op':<24} {'shape (B,H,W,C)':<20} {'median ms':>10} {'temp MiB':>9} {'input MiB':>9}"
    print(head)
    print("-" * len(head))
    for shape in shapes:
        for op in ops:
            ms, temp, inp = measure(op, shape, args.repeats)
            print(f"{op:<24} {str(shape):<20} {ms:>10.2f} {temp:>9.1f} {inp:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
