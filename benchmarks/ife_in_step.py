"""Where an IFE variant's extra train-step time goes: the wider network, the selection, the scores.

For each IFE variant (default UNet+C and UNet+E) four train steps of the same network and batch
are compiled, then timed in interleaved rounds (one step of each per round, so that a machine
whose speed drifts slows them alike):

- ``plain``: the network without IFE;
- ``widened``: IFE's output shape, the first ``k`` channels appended as a slice: the wider
  convolutions that read the appended channels, and the concatenation (on CPU, where
  :func:`ife_jax.nn.conv.concat_conv_folds` holds, the copies folded into the kernels
  instead, which adds no FLOPs);
- ``selected``: every score zero, so the top ``k`` are the first ``k`` channels, gathered as IFE
  gathers them: adds the top-k sort, the gather and its gradient;
- ``full``: the variant itself: adds the scoring (curvature or entropy).

The table gives each step's median, then the three differences (widening, selection, scoring)
and the total, each the median over rounds of the difference within a round, in ms and in % of
the plain step, with the extra FLOPs of the widened network (XLA's cost analysis). The
ablations replace :func:`ife_jax.ops.enhance` inside the IFE module while the step is traced,
for this benchmark only.

    python benchmarks/ife_in_step.py --size 224 --batch-size 4                  # a CPU, float32
    python benchmarks/ife_in_step.py --batch-size 32 --precision bfloat16       # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # benchmarks/train.py

import ife_jax.nn.ife as ife_module
from ife_jax.ops import num_selected, select_channels
from ife_jax.train.sharding import make_mesh

KINDS = ("plain", "widened", "selected", "full")
PLAIN = {"UNet+C": "UNet", "UNet+E": "UNet", "DeepLabV3+E": "DeepLabV3+"}


def ablated_enhance(kind: str):
    """A stand-in for :func:`ife_jax.ops.enhance` that appends the first ``k`` channels:
    sliced (``"widened"``) or selected by all-zero scores and gathered (``"selected"``)."""
    if kind not in ("widened", "selected"):
        raise ValueError(f"kind must be 'widened' or 'selected'; got {kind!r}")

    def enhance(x, *, ratio, order, return_indices=False, **_):
        b, c = x.shape[0], x.shape[-1]
        k = num_selected(c, ratio)
        if kind == "widened":
            selected = x[..., :k]
            indices = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
        else:
            selected, indices = select_channels(x, jnp.zeros((b, c), jnp.float32), ratio=ratio)
        parts = (x, selected) if order == "raw_first" else (selected, x)
        out = jnp.concatenate(parts, axis=-1)
        return (out, indices) if return_indices else out

    return enhance


@contextlib.contextmanager
def ablation(kind: str):
    """Within it, IFE modules traced call the ``kind`` stand-in (``"full"``: the real one)."""
    if kind == "full":
        yield
        return
    original = ife_module.enhance
    ife_module.enhance = ablated_enhance(kind)
    try:
        yield
    finally:
        ife_module.enhance = original


def prepare_all(names, args, mesh) -> dict:
    """``{(variant, kind): prepared step}`` for every IFE variant in ``names`` and its plain
    network (compiled once per plain network)."""
    prepared = {}
    for name in names:
        if name not in PLAIN:
            raise ValueError(f"{name!r} is not an IFE variant; choose from {', '.join(PLAIN)}")
        plain = PLAIN[name]
        if (plain, "plain") not in prepared:
            prepared[plain, "plain"] = train.prepare(plain, args, mesh)
        for kind in KINDS[1:]:
            with ablation(kind):
                prepared[name, kind] = train.prepare(name, args, mesh)
    return prepared


def time_interleaved(prepared: dict, mesh, *, runs: int, warmup: int) -> dict:
    """Step seconds of every prepared step, one step of each per round: ``{key: [per round]}``."""
    for p in prepared.values():
        for _ in range(warmup):
            train.step_seconds(p, mesh)
    times = {key: [] for key in prepared}
    for _ in range(runs):
        for key, p in prepared.items():
            times[key].append(train.step_seconds(p, mesh))
    return times


def split(names, prepared: dict, times: dict) -> list[dict]:
    """Per IFE variant: the median step of each kind, and the three differences (widening,
    selection, scoring) and the total, each the median over rounds of that round's difference
    (seconds); and the widened network's extra FLOPs (fraction of the plain network's)."""
    rows = []
    for name in names:
        t = {kind: times[name, kind] for kind in KINDS[1:]}
        t["plain"] = times[PLAIN[name], "plain"]
        plain_flops = prepared[PLAIN[name], "plain"]["flops"]
        flops = (
            prepared[name, "widened"]["flops"] / plain_flops - 1 if plain_flops else float("nan")
        )

        def diff(a, b, t=t):
            return statistics.median(x - y for x, y in zip(t[a], t[b], strict=True))

        rows.append({
            "name": name, **{k: statistics.median(v) for k, v in t.items()},
            "extra_flops": flops,
            "widening": diff("widened", "plain"),
            "selection": diff("selected", "widened"),
            "scoring": diff("full", "selected"),
            "total": diff("full", "plain"),
        })  # fmt: skip
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<12}" + "".join(f"{k + ' ms':>13}" for k in KINDS)
          + f"{'extra FLOPs':>13}")  # fmt: skip
    for r in rows:
        print(f"{r['name']:<12}" + "".join(f"{1e3 * r[k]:>13.2f}" for k in KINDS)
              + f"{100 * r['extra_flops']:>12.1f}%")  # fmt: skip
    print("extra step time, median of the per-round differences, ms (% of the plain step)")
    print(f"{'model':<12}{'widening':>18}{'selection':>18}{'scoring':>18}{'total':>18}")
    for r in rows:
        parts = [r["widening"], r["selection"], r["scoring"], r["total"]]
        cells = [f"{1e3 * v:.1f} ({100 * v / r['plain']:+.1f}%)" for v in parts]
        print(f"{r['name']:<12}" + "".join(f"{c:>18}" for c in cells))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="UNet+C,UNet+E")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--widths", type=lambda s: [int(x) for x in s.split(",")],
                        help="UNet widths (default: the full 64..1024)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    args.device_only = True
    names = [n for n in args.models.split(",") if n]
    mesh = make_mesh()
    print(
        f"{jax.devices()[0].device_kind} x{jax.device_count()}, batch {args.batch_size}, "
        f"{args.size}x{args.size}, {args.precision}, median of {args.runs} interleaved rounds"
    )
    prepared = prepare_all(names, args, mesh)
    rows = split(names, prepared, time_interleaved(prepared, mesh, runs=args.runs,
                                                   warmup=args.warmup))  # fmt: skip
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
