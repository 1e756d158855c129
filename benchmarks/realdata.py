"""UNet vs UNet+C vs UNet+E on real CT/MR slices: one binary task per structure, 3 seeds each.

The data is not part of the repository. Build the folder of real slices first (about 970
8-bit PNG pairs of 20 structures in the reference layout, with a manifest)::

    python ../shared/realdata/build_totalseg.py OUT      # writes OUT/dmis2d and OUT/nnunet_raw

then (sized for about 40 minutes on 2 CPU cores: 27 runs of 64 px training)::

    python benchmarks/realdata.py OUT/dmis2d --output realdata_runs

Each structure becomes its own dataset (``ife-jax build-dataset OUT/dmis2d --anatomy S
--split-by slices``): its slices, split into contiguous slice ranges per volume (train, val,
test in slice order, so no test slice has a training neighbour). Every variant is trained with
each seed (``ife_jax.train.compare``; a rerun resumes), and the table printed at the end gives
test DSC as mean ± std over seeds with the paired t-test over seeds of each IFE variant
against UNet. Per-structure reports are in ``OUTPUT/<structure>/report``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import tfds_cosmos
from ife_jax.train.compare import compare
from ife_jax.train.config import preset


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="the dmis2d folder of real slices")
    p.add_argument("--output", default="realdata_runs")
    p.add_argument("--data-dir", help="TFDS data directory (default OUTPUT/tfds)")
    p.add_argument("--structures", default="Vertebra,Kidney,Iliopsoas")
    p.add_argument("--variants", default="unet,unet+c,unet+e")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--size", type=int, default=64, help="training and evaluation size (px)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    start = time.perf_counter()
    output = Path(args.output).absolute()
    data_dir = args.data_dir or str(output / "tfds")
    lines = []
    for structure in args.structures.split(","):
        builder = tfds_cosmos.build(
            args.source, data_dir=data_dir, anatomy=structure, split_by="slices"
        )
        splits = {k: v.num_examples for k, v in builder.info.splits.items()}
        print(f"{structure}: {builder.info.full_name} {splits}", flush=True)
        base = preset(
            "demo",
            dataset=builder.info.full_name.rsplit("/", 1)[0],
            data_dir=data_dir,
            epochs=args.epochs,
            train_sizes=(args.size,),
            eval_size=args.size,
            max_train_examples=None,
            max_eval_examples=None,
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
            progress=not args.no_progress,
            about=about,
        )
        for name, runs in result["runs"].items():
            dsc = [100 * r["test_dsc"] for r in runs.values()]
            mean = sum(dsc) / len(dsc)
            sd = (sum((d - mean) ** 2 for d in dsc) / (len(dsc) - 1)) ** 0.5 if len(dsc) > 1 else 0
            lines.append(f"| {structure} | {name} | {len(dsc)} | {mean:.2f} ± {sd:.2f} |")
        lines += [f"|  | {v} |  |  |" for v in result["verdicts"]["standard"]]
    minutes = (time.perf_counter() - start) / 60
    table = "\n".join(
        ["| structure | variant | seeds | test DSC (%) mean ± std over seeds |",
         "|---|---|---|---|", *lines]
    )  # fmt: skip
    print("\n" + table + f"\n\n({minutes:.1f} min wall)")
    (output / "realdata.md").write_text(table + f"\n\n{minutes:.1f} min wall\n")


if __name__ == "__main__":
    main()
