"""Images/s of the full sharded train step for UNet, UNet+C, UNet+E, DeepLabV3+ and DeepLabV3+E.

Default: the step with its input pipeline (the grain loader of ``ife_jax.data`` over the
synthetic dataset, resized to --size). ``--device-only``: a fixed synthetic batch already on
the device, which imports neither TFDS nor grain (for accelerators). With ``--peak-tflops``
the table adds MFU from the FLOPs XLA's cost analysis reports for the compiled step.

    python benchmarks/train.py --size 224 --batch-size 8
    python benchmarks/train.py --device-only --batch-size 32 --precision bfloat16 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import numpy as np

from ife_jax.train.config import TrainConfig
from ife_jax.train.models import build_model
from ife_jax.train.sharding import make_mesh, shard_batch
from ife_jax.train.state import (
    abstract_train_state,
    initialize,
    make_optimizer,
    state_shardings,
)
from ife_jax.train.step import jit_train_step, make_train_step

VARIANTS = {
    "UNet": ("unet", None),
    "UNet+C": ("unet", "curvature"),
    "UNet+E": ("unet", "entropy"),
    "DeepLabV3+": ("deeplabv3plus", None),
    "DeepLabV3+E": ("deeplabv3plus", "entropy"),
}


def _batches(args, size):
    if args.device_only:
        rng = np.random.default_rng(0)
        batch = {
            "image": rng.normal(size=(args.batch_size, size, size, 3)).astype(np.float32),
            "mask": (rng.random((args.batch_size, size, size, 1)) > 0.5).astype(np.float32),
        }
        while True:
            yield batch
    import tfds_cosmos
    from ife_jax.data import make_train_loader

    source = tfds_cosmos.load("synthetic/small", split="train", data_dir=args.data_dir)
    loader = make_train_loader(
        source, batch_size=args.batch_size, seed=0, sizes=(size,), num_workers=args.num_workers
    )
    yield from iter(loader)


def _flops(lowered) -> float:
    """FLOPs of the step from the HLO before backend rewrites.

    The compiled module's own count misses GPU convolutions, which become library calls that
    cost analysis does not see (it reported ~1% of the real work on an H100).
    """
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _peak_bytes(compiled) -> int | None:
    """Device bytes one step holds at its peak: arguments, outputs and temporaries, less aliases."""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        return None
    if m is None:
        return None
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def ife_cost(row: dict, plain: dict) -> dict:
    """Splits an IFE variant's extra step time into extra FLOPs and the rest.

    At the plain model's achieved FLOP rate the variant's extra FLOPs (the wider decoder
    convolutions, from the lowered HLO) would take ``plain_step * (flops / plain_flops - 1)``;
    the remainder of the extra time is what those FLOPs do not explain: scoring and
    selection, and the wider network running below the plain one's FLOP rate (the copies
    of the concatenations). ``benchmarks/ife_in_step.py`` measures the parts by ablated steps.
    All three are returned as fractions of the plain model's step.
    """
    extra = row["step_s"] / plain["step_s"] - 1.0
    flops = row["flops"] / plain["flops"] - 1.0 if plain["flops"] else float("nan")
    return {"extra": extra, "flops": flops, "remainder": extra - flops}


def prepare(name, args, mesh) -> dict:
    """The compiled train step of variant ``name`` with its state and batches, ready to time:
    ``compiled``, ``state``, ``batches`` (an iterator of host batches), ``compile_s``, ``flops``
    and ``peak_bytes``."""
    model_name, ife = VARIANTS[name]
    kwargs = {"widths": tuple(args.widths)} if args.widths and model_name == "unet" else {}
    config = TrainConfig(
        model=model_name,
        ife=ife,
        precision=args.precision,
        model_kwargs=kwargs,
        batch_size=args.batch_size,
    )
    model = build_model(config)
    tx = make_optimizer(config, 100)
    abstract, init = abstract_train_state(model, tx, (1, args.size, args.size, 3))
    shardings = state_shardings(abstract, mesh)
    state = initialize(init, jax.random.key(0), shardings)
    step = jit_train_step(make_train_step(model, tx, base_key=jax.random.key(1)), shardings, mesh)
    batches = _batches(args, args.size)
    batch = shard_batch(next(batches), mesh)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    compiled = lowered.compile()
    return {
        "compiled": compiled,
        "state": state,
        "batches": batches,
        "compile_s": time.perf_counter() - t0,
        "flops": _flops(lowered),
        "peak_bytes": _peak_bytes(compiled),
    }


def step_seconds(prepared: dict, mesh) -> float:
    """Wall time of one train step of a :func:`prepare`-d variant (its state advances): from
    taking the next batch (the input pipeline's share included) to the step's results."""
    t = time.perf_counter()
    batch = shard_batch(next(prepared["batches"]), mesh)
    prepared["state"], metrics = prepared["compiled"](prepared["state"], batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - t


def bench(name, args, mesh):
    """One row of the table: variant ``name`` timed over ``args.runs`` steps (median)."""
    p = prepare(name, args, mesh)
    for _ in range(args.warmup):
        step_seconds(p, mesh)
    median = statistics.median(step_seconds(p, mesh) for _ in range(args.runs))
    return {
        "peak_bytes": p["peak_bytes"],
        "name": name,
        "images_s": args.batch_size / median,
        "step_s": median,
        "compile_s": p["compile_s"],
        "tflops": p["flops"] / median / 1e12,
        "flops": p["flops"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(VARIANTS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--widths",
        type=lambda s: [int(x) for x in s.split(",")],
        help="UNet widths (default: the full 64..1024)",
    )
    parser.add_argument(
        "--device-only",
        action="store_true",
        help="a fixed batch on the device; no TFDS/grain import",
    )
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (e.g. 989)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    mesh = make_mesh()
    print(
        f"{jax.devices()[0].device_kind} x{jax.device_count()}, batch {args.batch_size}, "
        f"{args.size}x{args.size}, {args.precision}, "
        f"{'device only' if args.device_only else 'with the input pipeline'}, "
        f"median of {args.runs}"
    )
    rows = [bench(name, args, mesh) for name in args.models.split(",")]
    print_table(rows, args.peak_tflops)
    heavy = sorted(
        {m.split(".")[0] for m in sys.modules}
        & {"keras", "tensorflow", "tensorflow_datasets", "grain"}
    )
    print(f"heavy modules loaded: {', '.join(heavy) or 'none'}")


def print_table(rows, peak_tflops=None):
    """The throughput table, then for UNet+C / UNet+E the split of their extra step time."""
    header = f"{'model':<12}{'images/s':>10}{'step ms':>9}{'compile s':>11}{'TFLOP/s':>9}"
    header += f"{'peak GiB':>10}" + (f"{'MFU':>8}" if peak_tflops else "")
    print(header)
    for r in rows:
        peak = f"{r['peak_bytes'] / 2**30:.2f}" if r["peak_bytes"] is not None else "-"
        line = (
            f"{r['name']:<12}{r['images_s']:>10.2f}{1e3 * r['step_s']:>9.2f}"
            f"{r['compile_s']:>11.1f}{r['tflops']:>9.3f}{peak:>10}"
        )
        if peak_tflops:
            line += f"{100 * r['tflops'] / peak_tflops:>7.1f}%"
        print(line)
    plains = {"UNet": "UNet", "UNet+C": "UNet", "UNet+E": "UNet", "DeepLabV3+E": "DeepLabV3+"}
    by_name = {r["name"]: r for r in rows}
    split = [
        (r, by_name[plains[r["name"]]])
        for r in rows
        if r["name"] in plains and plains[r["name"]] != r["name"] and plains[r["name"]] in by_name
    ]
    if split:
        print("IFE cost, % of the plain model's step: extra step time = extra FLOPs + remainder")
        print("(remainder: scoring, selection and the wider network's lower FLOP rate; "
              "benchmarks/ife_in_step.py splits it)")  # fmt: skip
        print(f"{'model':<12}{'step ms':>9}{'extra':>9}{'FLOPs':>9}{'remainder':>11}{'ms':>8}")
        for r, plain in split:
            c = ife_cost(r, plain)
            print(
                f"{r['name']:<12}{1e3 * r['step_s']:>9.2f}{100 * c['extra']:>8.1f}%"
                f"{100 * c['flops']:>8.1f}%{100 * c['remainder']:>10.1f}%"
                f"{1e3 * c['remainder'] * plain['step_s']:>8.2f}"
            )


if __name__ == "__main__":
    main()
