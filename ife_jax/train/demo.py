"""``ife-jax demo``: UNet, UNet+C and UNet+E, three seeds each, trained to convergence on
synthetic data and compared over seeds (:func:`ife_jax.train.compare.compare`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ife_jax.train.config import preset

VARIANTS = ("unet", "unet+c", "unet+e")


def run_demo(
    output: str | Path = "ife_jax_demo",
    *,
    epochs: int | None = None,
    seeds: int = 3,
    data_dir: str | None = None,
    progress: bool = True,
    jobs: int | None = None,
) -> dict:
    """Builds ``synthetic/small``, trains the three variants with ``seeds`` seeds each (the
    ``demo`` preset), evaluates every run on the test split and writes the seed-level comparison
    to ``output/report``; run ``S`` of a variant lives in ``output/<variant>/seed<S>`` and a
    rerun resumes where an interrupted demo stopped. ``jobs`` runs train at once, each in its own
    process on its share of the CPU cores (default: :func:`ife_jax.train.compare.default_jobs`,
    one per core on a CPU: the narrow network does not keep two cores busy).

    Returns:
      What :func:`ife_jax.train.compare.compare` returns, plus ``"minutes"`` (wall time) and
      ``"cpu_minutes"`` (CPU time of this process and of its run processes, all threads).
    """
    import tfds_cosmos
    from ife_jax.train.compare import compare, convergence, default_jobs, quarter_start

    start, cpu_start = time.perf_counter(), _cpu_seconds()
    jobs = default_jobs() if jobs is None else jobs
    output = Path(output).absolute()
    data_dir = str(data_dir or output / "tfds")
    config = preset("demo", data_dir=data_dir, **({"epochs": epochs} if epochs else {}))
    print(
        f"ife-jax demo: a narrow UNet (widths {config.model_kwargs['widths']}) with and without "
        f"IFE, {seeds} seeds each, trained {config.epochs} epochs (batch {config.batch_size}, "
        f"Adam {config.learning_rate:g}, {config.lr_schedule} schedule, "
        f"{_AUGMENT_WORDS[config.augment]}) on "
        f"{config.max_train_examples} synthetic images at "
        f"{'/'.join(map(str, config.train_sizes))} px, evaluated at {config.eval_size} px"
        f"{_precise(config)} (the paper trains the full UNet 100 epochs at 224-384 px on "
        f"Cosmos55k).\nWriting to "
        f"{output}, {jobs} run{'s' if jobs > 1 else ''} at a time",
        flush=True,
    )
    builder = tfds_cosmos.build(config.dataset, data_dir=data_dir, progress=progress)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f"dataset {builder.info.full_name}: {splits}", flush=True)
    result = compare(
        config,
        VARIANTS,
        output,
        seeds=seeds,
        progress=progress,
        about=f"{splits.get('test')} test images of {builder.info.full_name}",
        jobs=jobs,
    )
    print("\n" + result["text"]["standard"])
    print(
        "Convergence (best validation Dice gained over the last quarter of epochs, after epoch "
        f"{quarter_start(config.epochs)} of {config.epochs}):"
    )
    for name, runs in result["runs"].items():
        gains = {s: convergence(run["curve"]) for s, run in runs.items()}
        cells = ", ".join(f"seed {s} {100 * g:+.2f}" for s, g in gains.items())
        missed = [str(s) for s, g in gains.items() if not g < 0.01]
        verdict = (
            f"NOT converged: seed {', '.join(missed)} gained 1 point or more"
            if missed
            else "converged: each < 1 point"
        )
        first = ", ".join(
            f"{100 * convergence(run['curve'], from_best=False):+.2f}" for run in runs.values()
        )
        print(f"  {name}: {cells} points ({verdict}; from the quarter's first epoch: {first})")
    minutes = (time.perf_counter() - start) / 60
    cpu_minutes = (_cpu_seconds() - cpu_start) / 60
    print(
        f"report (both conventions, seeds.csv, comparison.png: one point per seed and every "
        f"validation curve) in {result['report']}; each run's files in "
        f"{output}/<variant>/seed<S> ({minutes:.1f} min wall, {cpu_minutes:.1f} min CPU)"
    )
    return {**result, "minutes": minutes, "cpu_minutes": cpu_minutes}


_AUGMENT_WORDS = {
    "reference": "the reference augmentation",
    "no_rotation": "the reference augmentation without its rotation",
    "none": "no augmentation",
}


def _precise(config) -> str:
    """How the BatchNorm statistics are validated, for the demo's first line."""
    if not config.precise_bn_examples:
        return ""
    return (
        f", BatchNorm statistics recomputed over {config.precise_bn_examples} training images "
        "before each validation"
    )


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
