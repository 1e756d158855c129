"""UNet vs UNet+C vs UNet+E on real CT/MR slices: one binary task per structure, 3 seeds each.

The data is not part of the repository. Build the folder of real slices first (about 970
8-bit PNG pairs of 20 structures in the reference layout, with a manifest)::

    python ../shared/realdata/build_totalseg.py OUT      # writes OUT/dmis2d and OUT/nnunet_raw

then (27 runs, 24 minutes on an idle 2-core CPU, two at a time)::

    python benchmarks/realdata.py OUT/dmis2d --output realdata_runs

Each structure becomes its own dataset (``ife-jax build-dataset OUT/dmis2d --anatomy S
--split-by slices``): its slices, split into contiguous slice ranges per volume (train, val,
test in slice order, so no test slice has a training neighbour). Every variant is trained with
each seed (``ife_jax.train.compare``; a rerun resumes), and the table printed at the end gives
test DSC as mean ± std over seeds with the paired t-test over seeds of each IFE variant
against UNet. Per-structure reports are in ``OUTPUT/<structure>/report``.

The training budget is a number of optimiser steps, the same for every structure (a few dozen
training slices make 3 to 8 steps per epoch, so a fixed epoch count would give the smallest
structure the fewest updates): as many epochs as make about ``--steps`` steps. Validation and
the checkpoint come every few epochs (about ``--epoch-steps`` steps apart, so about 20 times per
run rather than after every 3 steps). Adam at ``--lr`` runs for the first three quarters of the
epochs, then at a tenth of it (the step decay of :class:`ife_jax.train.config.TrainConfig`).
Slices of about 100 x 120 px are trained and evaluated at ``--size`` px (96 keeps a small kidney
section at a few dozen pixels; metrics are computed at the original size). ``--jobs`` runs train
at once, each in its own process on its share of the cores (default: one per core, at most 4).
"""

from __future__ import annotations

import argparse
import math
import resource
import time
from pathlib import Path

import tfds_cosmos
from ife_jax.train.compare import compare, convergence, default_jobs
from ife_jax.train.config import TrainConfig

#: The narrow UNet of the CPU benchmarks (the reference UNet has widths 64 ... 1024).
WIDTHS = (8, 16, 32, 64, 128)


def structure_config(
    dataset: str, data_dir: str, *, train_examples: int, args: argparse.Namespace
) -> TrainConfig:
    """The baseline run of one structure: whole epochs that make about ``args.steps`` steps of
    ``args.batch_size`` slices, validated and checkpointed about every ``args.epoch_steps``."""
    if train_examples < args.batch_size:
        raise ValueError(
            f"{train_examples} training slices, fewer than --batch-size {args.batch_size}"
        )
    steps_per_epoch = train_examples // args.batch_size  # the last partial batch drops
    epochs = math.ceil(args.steps / steps_per_epoch)
    every = max(1, round(args.epoch_steps / steps_per_epoch))
    return TrainConfig(
        model="unet",
        model_kwargs={"widths": WIDTHS},
        dataset=dataset,
        data_dir=data_dir,
        train_split="train",
        eval_split="val",
        max_train_examples=None,
        max_eval_examples=None,
        batch_size=args.batch_size,
        epochs=epochs,
        optimizer="adam",
        learning_rate=args.lr,
        decay_factor=0.1,
        decay_every_epochs=max(1, round(0.75 * epochs)),
        grad_clip_norm=1.0,
        train_sizes=(args.size,),
        eval_size=args.size,
        precision="float32",
        eval_every_epochs=every,
        checkpoint_every_epochs=every,
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="the dmis2d folder of real slices")
    p.add_argument("--output", default="realdata_runs")
    p.add_argument("--data-dir", help="TFDS data directory (default OUTPUT/tfds)")
    p.add_argument("--structures", default="Vertebra,Kidney,Iliopsoas")
    p.add_argument("--variants", default="unet,unet+c,unet+e")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=450, help="optimiser steps per run")
    p.add_argument("--epoch-steps", type=int, default=24, help="about this many steps an epoch")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's rate before the decay")
    p.add_argument("--size", type=int, default=96, help="training and evaluation size (px)")
    p.add_argument("--jobs", type=int, help="runs trained at once (default: one per core, <= 4)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    start, cpu_start = time.perf_counter(), time.process_time()
    output = Path(args.output).absolute()
    data_dir = args.data_dir or str(output / "tfds")
    lines, notes = [], []
    for structure in args.structures.split(","):
        builder = tfds_cosmos.build(
            args.source, data_dir=data_dir, anatomy=structure, split_by="slices"
        )
        splits = {k: v.num_examples for k, v in builder.info.splits.items()}
        base = structure_config(
            builder.info.full_name.rsplit("/", 1)[0],
            data_dir,
            train_examples=splits["train"],
            args=args,
        )
        print(
            f"{structure}: {builder.info.full_name} {splits}; {base.epochs} epochs of "
            f"{splits['train'] // args.batch_size} steps, validated every "
            f"{base.eval_every_epochs}",
            flush=True,
        )
        about = (
            f"{structure}, {splits.get('test')} test slices of {builder.info.full_name}, split "
            f"by contiguous slice ranges per volume (train/val/test {splits})"
        )
        result = compare(
            base,
            args.variants.split(","),
            output / structure,
            seeds=args.seeds,
            jobs=args.jobs or default_jobs(),
            progress=not args.no_progress,
            about=about,
        )
        for name, runs in result["runs"].items():
            dsc = [100 * r["test_dsc"] for r in runs.values()]
            mean = sum(dsc) / len(dsc)
            sd = (sum((d - mean) ** 2 for d in dsc) / (len(dsc) - 1)) ** 0.5 if len(dsc) > 1 else 0
            seeds = ", ".join(f"{d:.1f}" for d in dsc)
            lines.append(f"| {structure} | {name} | {mean:.2f} ± {sd:.2f} | {seeds} |")
            gains = [100 * convergence(r["curve"]) for r in runs.values()]
            notes.append(
                f"{structure} {name}: best validation Dice gained over the last quarter of epochs "
                + ", ".join(f"{g:+.2f}" for g in gains)
                + " points"
            )
        lines += [f"|  | {v} |  |  |" for v in result["verdicts"]["standard"]]
    minutes = (time.perf_counter() - start) / 60
    cpu_minutes = (time.process_time() - cpu_start) / 60
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_minutes += (usage.ru_utime + usage.ru_stime) / 60
    table = "\n".join(
        ["| structure | variant | test DSC (%), mean ± std over seeds | per seed |",
         "|---|---|---|---|", *lines]
    )  # fmt: skip
    timing = f"{minutes:.1f} min wall, {cpu_minutes:.1f} min CPU"
    text = f"{table}\n\n" + "\n".join(notes) + f"\n\n({timing})\n"
    print("\n" + text)
    (output / "realdata.md").write_text(text)


if __name__ == "__main__":
    main()
