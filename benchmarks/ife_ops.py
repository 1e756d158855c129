"""Time and memory of the IFE scoring ops; prints a table.

    python benchmarks/ife_ops.py              # the main case and a one-axis-at-a-time sweep
    python benchmarks/ife_ops.py --quick      # the main case only
    python benchmarks/ife_ops.py --shape 32,112,112,64 --ops entropy_paper
    python benchmarks/ife_ops.py --volumes    # 3-D rows beside 2-D rows of as many elements
    python benchmarks/ife_ops.py --volumes --shape3d 2,64,128,128,32

Median wall time of >= 5 jitted runs after a warm-up (``block_until_ready``), and the extra
memory XLA reserves for temporaries (``memory_analysis().temp_size_in_bytes``) beyond the
input and output buffers. With ``--volumes`` each 3-D op (B, D, H, W, C) is timed beside its
2-D counterpart on (B * D, H, W, C), the same number of elements, and the table gives the
per-element cost ratio (3-D time per element / 2-D time per element).
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
#: 3-D rows: each op runs on the volume and on its D slices stacked as a 2-D batch.
VOLUME_OPS = ("curvature", "entropy_paper", "enhance_entropy")
VOLUME = (2, 16, 64, 64, 16)


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


def volume_rows(shape3d, ops, repeats):
    b, d, h, w, c = shape3d
    shape2d = (b * d, h, w, c)
    n = b * d * h * w * c
    head = (
        f"{'op':<18} {'3-D shape':<22} {'3-D ms':>8} {'2-D shape':<20} {'2-D ms':>8} "
        f"{'ns/elem 3-D':>11} {'ns/elem 2-D':>11} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    for op in ops:
        ms3, _, _ = measure(op, shape3d, repeats)
        ms2, _, _ = measure(op, shape2d, repeats)
        e3, e2 = ms3 * 1e6 / n, ms2 * 1e6 / n
        print(
            f"{op:<18} {str(shape3d):<22} {ms3:>8.2f} {str(shape2d):<20} {ms2:>8.2f} "
            f"{e3:>11.3f} {e2:>11.3f} {e3 / e2:>6.2f}",
            flush=True,
        )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="main case only")
    p.add_argument("--shape", help="one B,H,W,C shape instead of the default set")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated ops")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--volumes", action="store_true", help="3-D rows beside 2-D rows")
    p.add_argument("--shape3d", help="B,D,H,W,C of the volume rows (default 2,16,64,64,16)")
    args = p.parse_args()
    if args.volumes:
        shape3d = tuple(int(s) for s in args.shape3d.split(",")) if args.shape3d else VOLUME
        dev = jax.devices()[0]
        print(f"device: {dev.platform} ({dev.device_kind}), jax {jax.__version__}")
        volume_rows(shape3d, VOLUME_OPS, args.repeats)
        return
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
