"""``compare``: several model variants x several seeds on one dataset, one seed-level report.

Each (variant, seed) run trains in its own workdir ``OUTPUT/<variant>/seed<S>`` (resumed if it
was interrupted) and is evaluated on the test split; the run's per-image records and its
validation curve are then kept in ``result.json`` there, and a rerun skips runs that have one.
The report treats **seeds as the replicates**: a run contributes one value per metric (its mean
over the test images), tables show mean ± std of those values over seeds, and each variant is
compared with the baseline (the first variant) by the paired t-test over seeds of per-seed mean
DSC (runs of one seed share the data order), with the difference of seed means and its 95%
t confidence interval.

A test over images pooled across seeds is deliberately not made: the test images are the same
in every run, so per-image scores of one run are not replicates of the method, and a model of
images x seeds (images as a random effect) needs more seeds than a comparison on a CPU affords
to estimate the seed variance it rests on. The per-modality and per-anatomy comparisons use the
same seed-level test on each group's per-seed means.

Variant strings: ``NET[+c|+e][@R1,R2,...]`` with NET one of ``unet``, ``deeplabv3plus``,
``sinetv2``, ``nnunet``; ``+c`` curvature IFE, ``+e`` entropy IFE, with the ratios of the
network's Table 1 row unless ``@`` gives them (shallow to deep, each in [0, 1]).

Runs at once (``jobs``): on a CPU a small network does not keep several cores busy (the narrow
UNet of the demo trains as fast on one core as on two), so ``jobs=N`` trains N runs at a time,
each in its own process pinned to its share of the CPU cores, with its output in
``OUTPUT/logs/<variant>_seed<S>.log``. Runs of one variant lower to the same programs, so runs
start in seed-major order (seed 0 of every variant first) and a later seed loads the programs
an earlier one compiled instead of compiling them at the same time. A run whose thread pools
are sized for one core is compiled with XLA:CPU's memory-oriented instruction schedule instead
of the concurrency-oriented default (:data:`ONE_CORE_XLA_FLAGS`): with one thread nothing runs
concurrently, and the demo's train step took 15% less time that way (the reference UNet on two
cores took 3-7% more, so runs with more cores keep the default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ife_jax.train.config import MODELS, TABLE1_RATIOS, TrainConfig

#: Paired differences with p below this are called significant in the verdicts.
SIGNIFICANCE = 0.05
_VARIANT = re.compile(r"^(?P<net>[a-z0-9]+)(?:\+(?P<ife>[ce]))?(?:@(?P<ratios>[^@]+))?$")
_RESULT = "result.json"
_RESULT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Variant:
    """One model variant of a comparison.

    Attributes:
      spec: the string it was parsed from (normalised to lower case).
      name: the report's name (``UNet``, ``UNet+C``, ``UNet+E@0.75,0.5``).
      model, ife, ratios: the ``TrainConfig`` fields it sets.
    """

    spec: str
    name: str
    model: str
    ife: str | None
    ratios: tuple[float, ...] | None

    @property
    def folder(self) -> str:
        """A file-name-safe folder name: ``unet``, ``unet_c``, ``unet_e-0.75_0.5``."""
        return self.spec.replace("+", "_").replace("@", "-").replace(",", "_")


def parse_variant(text: str) -> Variant:
    """``"unet"``, ``"unet+c"``, ``"unet+e@0.75,0.5"``, ... as a :class:`Variant`.

    Raises:
      ValueError: naming ``text`` when it is not of the form ``NET[+c|+e][@R1,R2,...]``, names
        an unknown network, gives ratios without IFE or a ratio outside [0, 1].
    """
    from ife_jax.train.evaluate import MODEL_NAMES

    spec = str(text).strip().lower()
    form = "expected NET[+c|+e][@R1,R2,...], e.g. unet, unet+c, unet+e@0.75,0.5"
    m = _VARIANT.match(spec)
    if m is None:
        raise ValueError(f"variant {text!r}: {form}")
    net, code, ratio_text = m["net"], m["ife"], m["ratios"]
    if net not in MODELS:
        raise ValueError(f"variant {text!r}: unknown network {net!r}; choose one of {MODELS}")
    ife = {"c": "curvature", "e": "entropy", None: None}[code]
    if ratio_text is not None:
        if ife is None:
            raise ValueError(f"variant {text!r}: ratios need +c or +e ({form})")
        try:
            ratios = tuple(float(r) for r in ratio_text.split(","))
        except ValueError:
            raise ValueError(f"variant {text!r}: ratios must be numbers ({form})") from None
        if not all(0.0 <= r <= 1.0 for r in ratios):
            raise ValueError(f"variant {text!r}: every ratio must lie in [0, 1]")
    else:
        ratios = TABLE1_RATIOS[net][ife] if ife else None
    name = MODEL_NAMES[net] + {"curvature": "+C", "entropy": "+E", None: ""}[ife]
    if ratio_text is not None:
        name += "@" + ",".join(f"{r:g}" for r in ratios)
    return Variant(spec=spec, name=name, model=net, ife=ife, ratios=ratios)


def parse_variants(texts: Sequence[str]) -> list[Variant]:
    """:func:`parse_variant` of each; raises ``ValueError`` on an empty list or a repeat."""
    variants = [parse_variant(t) for t in texts]
    if not variants:
        raise ValueError("variants is empty: give at least one, e.g. unet,unet+c,unet+e")
    names = [v.name for v in variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"variants {repeated} are given more than once")
    return variants


def run_config(base: TrainConfig, variant: Variant, seed: int) -> TrainConfig:
    """``base`` with the variant's network, IFE and ratios and ``seed``. The base's
    ``model_kwargs`` (e.g. UNet widths) are kept for its own network and dropped for others."""
    kwargs = base.model_kwargs if variant.model == base.model else {}
    return base.replace(
        model=variant.model, ife=variant.ife, ratios=variant.ratios, model_kwargs=kwargs, seed=seed
    )


# ----------------------------------------------------------------------------------- statistics


def seed_records(run_records: Sequence[dict], *, model: str, seed: int) -> dict[str, list[dict]]:
    """A run's per-image records reduced to seed-level records (one run = one replicate).

    Returns:
      ``{"all": [r], "modality": [r per modality], "anatomy": [r per anatomy]}``: records of
      :mod:`ife_jax.metrics.report` whose metrics are the run's means over its images (of that
      group), with ``image_id`` ``"seed<S>"``, so that ``report.format_table`` of the records of
      several seeds shows mean ± std over seeds.
    """
    from ife_jax.metrics import METRIC_KEYS

    def mean_record(sel, modality, anatomy):
        rec = {"image_id": f"seed{seed}", "modality": modality, "anatomy": anatomy}
        rec.update(model=model, seed=seed, n_images=len(sel))
        rec.update({k: float(np.mean([float(r[k]) for r in sel])) for k in METRIC_KEYS})
        return rec

    out = {"all": [mean_record(run_records, "all", "all")]}
    for by in ("modality", "anatomy"):
        groups = sorted({str(r[by]) for r in run_records})
        out[by] = [
            mean_record(
                [r for r in run_records if str(r[by]) == g],
                g if by == "modality" else "all",
                g if by == "anatomy" else "all",
            )
            for g in groups
        ]
    return out


def paired_seed_test(baseline: Sequence[float], variant: Sequence[float]) -> dict:
    """Difference of seed means (variant - baseline) with a 95% t interval and a paired t-test.

    ``d_s = variant_s - baseline_s`` for the seeds ``s`` both ran; the interval is
    ``mean(d) ± t_{0.975, n-1} * sd(d) / sqrt(n)`` and ``p`` the two-sided p-value of the paired
    t-test (``t = mean(d) / (sd(d) / sqrt(n))``, n - 1 degrees of freedom).

    Returns:
      ``{"n", "mean_baseline", "mean_variant", "diff", "ci_low", "ci_high", "t", "p"}``; with one
      seed the interval, t and p are NaN; when all differences are equal (sd 0) the interval is
      that difference and p is 1 for a zero difference, 0 otherwise.
    """
    from scipy import stats

    a, b = np.asarray(baseline, np.float64), np.asarray(variant, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"need two equal, non-empty lists of seed values, got {a.shape}, {b.shape}"
        )
    d = b - a
    n = d.size
    out = {"n": n, "mean_baseline": a.mean(), "mean_variant": b.mean(), "diff": d.mean()}
    nan = {"ci_low": math.nan, "ci_high": math.nan, "t": math.nan, "p": math.nan}
    if n < 2:
        return {**out, **nan}
    sd = d.std(ddof=1)
    if sd == 0:
        p = 1.0 if d[0] == 0 else 0.0
        return {**out, "ci_low": d[0], "ci_high": d[0], "t": math.nan, "p": p}
    se = sd / math.sqrt(n)
    half = stats.t.ppf(0.975, n - 1) * se
    t = d.mean() / se
    p = 2.0 * stats.t.sf(abs(t), n - 1)
    return {**out, "ci_low": d.mean() - half, "ci_high": d.mean() + half, "t": t, "p": p}


def quarter_start(last_epoch: int) -> int:
    """The epoch after which :func:`convergence` counts the last quarter: ``E - E // 4``."""
    return last_epoch - last_epoch // 4


def convergence(curve: Sequence[tuple[int, float]], *, from_best: bool = True) -> float:
    """How much the best validation Dice rose over the last quarter of epochs: the best value of
    the whole curve minus the best up to epoch ``E - E // 4`` (``E`` the last epoch; with
    validation every few epochs, up to the last validated epoch at or before it). NaN for a
    curve of fewer than 4 epochs or with no validation that early. A converged run gains less
    than 0.01.

    The running best is the curve that matters: the test scores come from the checkpoint of
    best validation Dice. A dip at the quarter's first epoch is not counted as a gain; a new
    best in the last quarter is, by how much it beats every earlier epoch. With
    ``from_best=False`` the reference is the value at the quarter's first (validated) epoch
    alone, so such a dip counts."""
    points = dict(curve)
    if not points or max(points) < 4:
        return math.nan
    last = max(points)
    before = {e: v for e, v in points.items() if e <= quarter_start(last)}
    if not before:
        return math.nan
    start = max(before)
    if from_best:
        return max(points.values()) - max(before.values())
    return max(v for e, v in points.items() if e >= start) - points[start]


def verdict(test: dict, *, baseline: str, variant: str, metric: str = "DSC") -> str:
    """One line from :func:`paired_seed_test` on a x100 metric: the difference, its interval, p
    and whether it is significant at :data:`SIGNIFICANCE` with that many seeds."""
    n, diff = test["n"], 100 * test["diff"]
    if n < 2 or math.isnan(test["p"]):
        return (
            f"{variant} vs {baseline}: {metric} {diff:+.2f} points from {n} seed(s); "
            "no test possible with fewer than 2 seeds"
        )
    ci = f"95% CI [{100 * test['ci_low']:+.2f}, {100 * test['ci_high']:+.2f}]"
    p = f"p = {test['p']:.2g}"
    if test["p"] < SIGNIFICANCE:
        word = "better" if diff > 0 else "worse"
        return (
            f"{variant} vs {baseline}: {word} by {abs(diff):.2f} points of {metric} "
            f"({ci}, {p}, paired t-test over {n} seeds)"
        )
    return (
        f"{variant} vs {baseline}: no significant difference in {metric} at {n} seeds "
        f"(difference {diff:+.2f} points, {ci}, {p})"
    )


def compare_variants(runs: dict[str, dict[int, list[dict]]], baseline: str, variant: str,
                     *, key: str = "dsc", by: str = "all") -> list[dict]:  # fmt: skip
    """Seed-level comparison of ``variant`` with ``baseline`` on ``key``, overall or per group.

    Args:
      runs: variant name -> seed -> that run's per-image records (one convention).
      by: ``"all"``, ``"modality"`` or ``"anatomy"``.

    Returns:
      One row per group: ``{"group", **paired_seed_test(...)}`` over the seeds both ran.
    """
    seeds = sorted(set(runs[baseline]) & set(runs[variant]))
    if not seeds:
        raise ValueError(f"{baseline} and {variant} have no seed in common")
    per_seed = {
        name: {s: seed_records(runs[name][s], model=name, seed=s)[by] for s in seeds}
        for name in (baseline, variant)
    }
    groups = sorted({r["anatomy" if by == "anatomy" else "modality"] for r in
                     per_seed[baseline][seeds[0]]})  # fmt: skip
    field = "anatomy" if by == "anatomy" else "modality"
    rows = []
    for g in groups:
        values = {
            name: [next(r[key] for r in per_seed[name][s] if r[field] == g) for s in seeds]
            for name in (baseline, variant)
        }
        rows.append({"group": g, **paired_seed_test(values[baseline], values[variant])})
    return rows


def format_seed_comparison(rows: list[dict], baseline: str, variant: str, *, title: str) -> str:
    """Printable rows of :func:`compare_variants` (x100), ``*`` marking p < 0.05."""
    lines = [
        f"{title}: {variant} - {baseline}, DSC(%) over seeds (paired t-test, * p < 0.05)",
        f"  {'Group':<16} {'seeds':>5} {baseline[:14]:>14} {variant[:14]:>14} {'diff':>7} "
        f"{'95% CI':>17} {'p':>8}",
    ]
    for r in rows:
        p = (
            "n/a"
            if math.isnan(r["p"])
            else f"{r['p']:.2g}" + ("*" if r["p"] < SIGNIFICANCE else "")
        )
        ci = "n/a" if math.isnan(r["ci_low"]) else (
            f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]")  # fmt: skip
        lines.append(
            f"  {r['group'][:16]:<16} {r['n']:>5} {100 * r['mean_baseline']:>14.2f} "
            f"{100 * r['mean_variant']:>14.2f} {100 * r['diff']:>+7.2f} {ci:>17} {p:>8}"
        )
    return "\n".join(lines)


def format_report(
    runs: dict[str, dict[int, list[dict]]], *, convention: str, about: str = ""
) -> str:
    """The text report of one convention: the nine metrics as mean ± std over seeds (overall,
    by modality, by anatomy), then each variant against the first with its verdict."""
    from ife_jax.metrics.report import format_table

    names = list(runs)
    by_group = {by: [] for by in ("all", "modality", "anatomy")}
    for name in names:
        for seed in sorted(runs[name]):
            for by, recs in seed_records(runs[name][seed], model=name, seed=seed).items():
                by_group[by] += recs
    n_images = {len(recs) for seeds in runs.values() for recs in seeds.values()}
    head = (
        f"{convention} convention{': ' + about if about else ''}; "
        f"each seed's value is its run's mean over {'/'.join(map(str, sorted(n_images)))} test "
        "images; tables show mean ± std over seeds (N = seeds)"
    )
    parts = [head, "", "Overall", format_table(by_group["all"]), ""]
    parts += ["By modality", format_table(by_group["modality"], by="modality"), ""]
    parts += ["By anatomy", format_table(by_group["anatomy"], by="anatomy"), ""]
    verdicts = []
    for other in names[1:]:
        for by in ("all", "modality", "anatomy"):
            rows = compare_variants(runs, names[0], other, by=by)
            title = {"all": "Overall", "modality": "By modality", "anatomy": "By anatomy"}[by]
            parts += [format_seed_comparison(rows, names[0], other, title=title), ""]
            if by == "all":
                verdicts.append(verdict(rows[0], baseline=names[0], variant=other))
    if verdicts:
        parts += ["Verdicts (seeds as replicates):", *("  " + v for v in verdicts), ""]
    return "\n".join(parts)


def plot_comparison(runs: dict[str, dict[int, list[dict]]], curves: dict[str, dict[int, list]],
                    path: str | Path) -> None:  # fmt: skip
    """Left: test DSC (%) of each run, one point per seed per variant, with the seed mean.
    Right: the validation Dice curves of all runs, one colour per variant."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), constrained_layout=True)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    colours = [f"C{i}" for i in range(10)]
    for i, name in enumerate(runs):
        c = colours[i % 10]
        values = [
            100 * float(np.mean([r["dsc"] for r in runs[name][s]])) for s in sorted(runs[name])
        ]
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
        ax1.plot(i + jitter, values, "o", color=c, alpha=0.8)
        ax1.hlines(np.mean(values), i - 0.25, i + 0.25, color=c, lw=2)
        for j, seed in enumerate(sorted(curves.get(name, {}))):
            points = curves[name][seed]
            if points:
                ep, val = zip(*points, strict=True)
                ax2.plot(ep, val, "-", color=c, alpha=0.7, lw=1.2, label=name if j == 0 else None)
    ax1.set_xticks(range(len(runs)))
    ax1.set_xticklabels(list(runs))
    ax1.set(ylabel="test DSC (%)", title="one point per seed, line: seed mean")
    ax2.set(xlabel="epoch", ylabel="validation Dice", title="validation curves of all runs")
    ax2.legend(fontsize=8)
    fig.savefig(str(path), dpi=110)


# --------------------------------------------------------------------------------------- runner


def _read_result(workdir: Path, config: TrainConfig) -> dict | None:
    """The stored result of a finished run of ``config`` in ``workdir``, or None."""
    path = workdir / _RESULT
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a damaged result is recomputed from the checkpoints
    if not isinstance(result, dict) or result.get("version") != _RESULT_VERSION:
        return None
    if result.get("config") != json.loads(config.to_json()):
        raise ValueError(
            f"{workdir} holds a finished run of another configuration; use a new --output"
        )
    return result


def _validation_curve(workdir: Path) -> list[tuple[int, float]]:
    from ife_jax.train.loop import MetricsLog

    records = MetricsLog(workdir / "metrics.jsonl").read()
    return [(int(r["epoch"]), float(r["val_dice"])) for r in records if "val_dice" in r]


def _run_one(config, workdir: Path, *, name: str, split: str, inputs, examples, progress) -> dict:
    """Trains (or resumes) and evaluates one run; stores and returns its result."""
    from ife_jax.train.evaluate import CONVENTIONS, evaluate
    from ife_jax.train.loop import train_and_evaluate

    train_and_evaluate(config, workdir, inputs=inputs, progress=progress)
    ev = evaluate(workdir, split=split, output=workdir / f"eval_{split}", examples=examples,
                  name=name)  # fmt: skip
    keep = ("image_id", "modality", "anatomy", "model", "empty_case")
    result = {
        "version": _RESULT_VERSION,
        "config": json.loads(config.to_json()),
        "name": name,
        "step": ev["step"],
        "records": {
            c: [{k: (r[k] if k in keep else float(r[k])) for k in r} for r in ev["records"][c]]
            for c in CONVENTIONS
        },
        "curve": _validation_curve(workdir),
    }
    tmp = workdir / (_RESULT + ".tmp")
    tmp.write_text(json.dumps(result) + "\n")
    os.replace(tmp, workdir / _RESULT)  # a killed write leaves no half result
    return result


@contextlib.contextmanager
def shared_compilation_cache():
    """Within it, a program this process compiles once is loaded, not recompiled, when another
    run builds it again: runs of one variant that differ only in their seed lower to the same
    program (the dropout key is an argument of the train step), so a comparison compiles one
    train step per variant and size, not one per run.

    It is JAX's persistent compilation cache in a fresh private temporary folder, deleted on
    exit, so no program written by anyone else is ever loaded. A cache folder the user has set
    (``JAX_COMPILATION_CACHE_DIR``) is used as it is.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="ife_jax_programs_") as folder:
        compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", folder)
        try:
            yield
        finally:
            jax.config.update("jax_compilation_cache_dir", None)
            compilation_cache.reset_cache()


def usable_cpus() -> list[int]:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def default_jobs(limit: int = 4) -> int:
    """Runs at once for small networks: one per usable CPU core (at most ``limit``, each
    process holds its own copy of the data and programs) on the CPU backend, else 1."""
    import jax

    return max(1, min(limit, len(usable_cpus()))) if jax.default_backend() == "cpu" else 1


def _check_jobs(jobs: int, *, inputs, examples) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: must be an integer >= 1")
    if jobs == 1:
        return
    if inputs is not None or examples is not None:
        raise ValueError(f"jobs={jobs}: runs in other processes read the dataset's own splits; "
                         "pass inputs=None and examples=None, or jobs=1")  # fmt: skip
    import jax

    if jax.default_backend() != "cpu":
        raise ValueError(f"jobs={jobs}: several runs at once are for the CPU backend; this "
                         f"process uses {jax.default_backend()!r}, use jobs=1")  # fmt: skip


#: XLA flags of a run whose thread pools are sized for one core (the module docstring).
ONE_CORE_XLA_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


def _worker_env(env: dict, pool: list[int]) -> dict:
    """``env`` for a worker whose thread pools are sized for ``pool``: with one core,
    :data:`ONE_CORE_XLA_FLAGS` are added to ``XLA_FLAGS``, except a flag the user already set."""
    if len(pool) != 1:
        return env
    flags = env.get("XLA_FLAGS", "").split()
    named = {f.split("=", 1)[0] for f in flags}
    flags += [f for f in ONE_CORE_XLA_FLAGS if f.split("=", 1)[0] not in named]
    return {**env, "XLA_FLAGS": " ".join(flags)}


def _cpu_groups(jobs: int) -> list[tuple[list[int], list[int]]]:
    """Where each of ``jobs`` runs at once may run, as ``(pool, cores)``: JAX sizes its thread
    pools while the run is pinned to ``pool``, then the run may use ``cores``. With at most one
    run per core, ``jobs`` disjoint near-equal groups (``pool == cores``); with more runs than
    cores, every run gets a one-core pool and all the cores, which the runs then share."""
    cpus = usable_cpus()
    if jobs > len(cpus):
        return [([cpus[k % len(cpus)]], cpus) for k in range(jobs)]
    size, extra = divmod(len(cpus), jobs)
    groups, start = [], 0
    for k in range(jobs):
        stop = start + size + (k < extra)
        groups.append((cpus[start:stop], cpus[start:stop]))
        start = stop
    return groups


def _pin(pool: list[int], cores: list[int]) -> None:
    """Pins this process to ``pool`` while JAX's CPU client makes its thread pools, then lets
    every thread run on ``cores`` (a pool of one thread per ``pool`` core, on shared cores)."""
    if not pool or not hasattr(os, "sched_setaffinity"):
        return
    _set_affinity(pool)  # before JAX sizes its thread pools
    if sorted(cores) == sorted(pool):
        return
    import jax.numpy as jnp

    x = jnp.ones((64, 64))
    (x @ x).block_until_ready()  # the client and its pools exist now
    _set_affinity(cores)


def _set_affinity(cpus: list[int]) -> None:
    """Every thread of this process (threads started by imports too) may run on ``cpus``."""
    os.sched_setaffinity(0, cpus)
    with contextlib.suppress(OSError):  # no /proc: the calling thread only
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(tid), cpus)


class _ValidatedEpoch:
    """The last epoch a running run has validated, from the lines its ``metrics.jsonl`` gained
    since the previous look (the file grows by a line a step; it is never read twice)."""

    def __init__(self, workdir: Path):
        self.path, self.offset, self.epoch = workdir / "metrics.jsonl", 0, 0

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:  # rewritten on resume
                    self.offset = self.epoch = 0
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return self.epoch
        whole = chunk.rfind(b"\n") + 1  # a line still being written waits for the next look
        for line in chunk[:whole].splitlines():
            if b'"val_dice"' in line:
                self.epoch = max(self.epoch, int(json.loads(line).get("epoch", 0)))
        self.offset += whole
        return self.epoch


def _log_tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run_parallel(todo, configs, results, output: Path, *, jobs: int, split: str, bar, say):
    """Trains ``todo`` runs ``jobs`` at a time in worker processes (see the module docstring),
    filling ``results``. A failed run stops the others (they resume on a rerun) and raises."""
    order = {v.name: i for i, v in enumerate(dict.fromkeys(v for v, _ in todo))}
    queue = sorted(todo, key=lambda vs: (vs[1], order[vs[0].name]))
    free = _cpu_groups(jobs)
    logs = output / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    import jax

    if jax.config.jax_compilation_cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = str(jax.config.jax_compilation_cache_dir)
    running = {}  # (variant, seed) -> (process, log file, cpu group, workdir, epoch watch)
    shown = ""
    try:
        while queue or running:
            while queue and free:
                v, s = queue.pop(0)
                cpus, workdir = free.pop(0), output / v.folder / f"seed{s}"
                pool, cores = cpus
                log_path = logs / f"{v.folder}_seed{s}.log"
                log = open(log_path, "a")  # closed when the process ends
                job = {
                    "config": json.loads(configs[v.name, s].to_json()),
                    "workdir": str(workdir),
                    "name": v.name,
                    "split": split,
                    "pool": pool,
                    "cpus": cores,
                }
                proc = subprocess.Popen(
                    [sys.executable, "-m", "ife_jax.train.compare", "--worker"],
                    stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                    env=_worker_env(env, pool),
                    text=True,
                )  # fmt: skip
                proc.stdin.write(json.dumps(job))
                proc.stdin.close()
                running[v, s] = (proc, log, cpus, workdir, _ValidatedEpoch(workdir))
                shared = f", shared by {jobs} runs" if pool != cores else ""
                say(f"== {v.name}, seed {s} ({workdir}; log {log_path}; cores {cores}{shared})")
            time.sleep(0.5)
            for (v, s), (proc, log, cpus, workdir, _) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[v, s]
                log.close()
                free.append(cpus)
                result = _read_result(workdir, configs[v.name, s])
                if proc.returncode != 0 or result is None:
                    raise RuntimeError(
                        f"run {v.name}, seed {s} failed (exit code {proc.returncode}); its log "
                        f"{log.name} ends:\n{_log_tail(Path(log.name))}"
                    )
                results[v.name, s] = result
                dsc = np.mean([r["dsc"] for r in result["records"]["standard"]])
                say(f"   {v.name}, seed {s}: test DSC {100 * dsc:.2f}")
                if bar is not None:
                    bar.update(1)
            if bar is None:
                continue
            postfix = ", ".join(
                f"{v.name} s{s} epoch {validated()}/{configs[v.name, s].epochs}"
                for (v, s), (*_, validated) in running.items()
            )
            if postfix != shown:
                bar.set_postfix_str(postfix)  # redrawn only when an epoch ends
                shown = postfix
    finally:
        for proc, *_ in running.values():
            proc.terminate()
        for proc, log, *_ in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the process that started it ends (a killed
    comparison leaves no orphan run holding its workdir)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent ended before the call
        sys.exit(1)


def _worker() -> None:
    """One run of a parallel comparison: the job (JSON on stdin) as ``compare`` builds it."""
    job = json.loads(sys.stdin.read())
    _die_with_parent()
    _pin(job["pool"], job["cpus"])
    config = TrainConfig.from_dict(job["config"])
    _run_one(config, Path(job["workdir"]), name=job["name"], split=job["split"], inputs=None,
             examples=None, progress=False)  # fmt: skip


def compare(
    base: TrainConfig,
    variants: Sequence[str | Variant],
    output: str | Path,
    *,
    seeds: int = 3,
    split: str = "test",
    inputs: Callable | None = None,
    examples=None,
    progress: bool = True,
    about: str = "",
    jobs: int = 1,
) -> dict:
    """Trains every variant with ``seeds`` seeds and writes the seed-level comparison.

    Args:
      base: the configuration every run starts from (dataset, budget, the baseline network's
        ``model_kwargs``); run ``k`` of a variant uses seed ``base.seed + k``.
      variants: variant strings (see the module docstring) or :class:`Variant` s; the first is
        the baseline.
      output: each run in ``output/<variant>/seed<S>``; the report in ``output/report``.
      seeds: runs per variant.
      split: the evaluated split.
      inputs, examples: as ``train_and_evaluate``'s ``inputs`` and ``evaluate``'s ``examples``
        (default: the dataset's splits).
      progress: an overall bar over the runs, plus each run's own bar.
      about: a phrase naming the data for the report's first line.
      jobs: runs trained at once, each in its own process on its share of the CPU cores (see
        the module docstring; :func:`default_jobs` suggests a number). CPU backend only, and
        ``inputs`` and ``examples`` must be None.

    Returns:
      ``{"report": folder, "text": {convention: report text}, "verdicts": [...],
      "runs": {variant: {seed: {"step", "test_dsc", "curve"}}}}``.

    Raises:
      ValueError: naming a bad variant, ``seeds < 1``, a bad ``jobs``, or an output that
        holds other runs.
      RuntimeError: a run trained in its own process failed (naming the run and its log).
    """
    from ife_jax.train.workdir import check_writable_folder

    parsed = parse_variants([v.spec if isinstance(v, Variant) else v for v in variants])
    if seeds < 1:
        raise ValueError(f"seeds={seeds}: must be >= 1")
    _check_jobs(jobs, inputs=inputs, examples=examples)
    output = check_writable_folder(output, what="the comparison folder")
    plan = [(v, base.seed + k) for v in parsed for k in range(seeds)]
    configs = {(v.name, s): run_config(base, v, s) for v, s in plan}  # validates each
    bar = None
    results = {}
    for v, s in plan:
        workdir = output / v.folder / f"seed{s}"
        results[v.name, s] = _read_result(workdir, configs[v.name, s])
    if progress:
        from tqdm.auto import tqdm

        done = sum(r is not None for r in results.values())
        bar = tqdm(total=len(plan), initial=done, desc="compare", unit="run", position=0)
    say = bar.write if bar is not None else print
    try:
        with shared_compilation_cache():
            todo = [(v, s) for v, s in plan if results[v.name, s] is None]
            if jobs > 1 and len(todo) > 1:
                _run_parallel(todo, configs, results, output, jobs=jobs, split=split, bar=bar,
                              say=say)  # fmt: skip
            for v, s in todo:
                if results[v.name, s] is not None:
                    continue
                workdir = output / v.folder / f"seed{s}"
                say(f"== {v.name}, seed {s} ({workdir})")
                results[v.name, s] = _run_one(
                    configs[v.name, s], workdir, name=v.name, split=split, inputs=inputs,
                    examples=examples, progress=progress,
                )  # fmt: skip
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return write_comparison(output / "report", parsed, results, about=about)


def write_comparison(folder: Path, variants: Sequence[Variant], results: dict, *,
                     about: str = "") -> dict:  # fmt: skip
    """The report of finished runs: ``summary.txt`` (both conventions), ``seeds.csv`` (every
    run's mean of every metric), ``comparison.json`` and ``comparison.png``."""
    import csv

    from ife_jax.metrics import METRIC_KEYS
    from ife_jax.train.evaluate import CONVENTIONS

    folder.mkdir(parents=True, exist_ok=True)
    names = [v.name for v in variants]
    seeds = sorted({s for (_, s) in results})
    runs = {
        c: {n: {s: results[n, s]["records"][c] for s in seeds} for n in names} for c in CONVENTIONS
    }
    texts = {c: format_report(runs[c], convention=c, about=about) for c in CONVENTIONS}
    (folder / "summary.txt").write_text("\n\n".join(texts.values()))
    with open(folder / "seeds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["convention", "model", "seed", "grouping", "group", "n_images", *METRIC_KEYS])
        for c in CONVENTIONS:
            for n in names:
                for s in seeds:
                    for by, recs in seed_records(runs[c][n][s], model=n, seed=s).items():
                        for r in recs:
                            group = r["anatomy"] if by == "anatomy" else r["modality"]
                            w.writerow([c, n, s, by, group, r["n_images"],
                                        *(repr(r[k]) for k in METRIC_KEYS)])  # fmt: skip
    curves = {n: {s: results[n, s]["curve"] for s in seeds} for n in names}
    plot_comparison(runs["standard"], curves, folder / "comparison.png")
    verdicts = {
        c: [
            verdict(compare_variants(runs[c], names[0], n)[0], baseline=names[0], variant=n)
            for n in names[1:]
        ]
        for c in CONVENTIONS
    }
    brief = {
        "report": str(folder),
        "text": texts,
        "verdicts": verdicts,
        "runs": {
            n: {
                s: {
                    "step": results[n, s]["step"],
                    "test_dsc": float(np.mean([r["dsc"] for r in runs["standard"][n][s]])),
                    "curve": curves[n][s],
                }
                for s in seeds
            }
            for n in names
        },
    }
    (folder / "comparison.json").write_text(
        json.dumps({k: brief[k] for k in ("verdicts", "runs")}, indent=2) + "\n"
    )
    return brief


if __name__ == "__main__":
    if sys.argv[1:] != ["--worker"]:
        raise SystemExit("usage: python -m ife_jax.train.compare --worker (a job on stdin)")
    _worker()
