"""Input pipeline throughput and dataset build time.

Prints a table: training-pipeline images/s (reference augmentation, batch resize) at 0, 1 and 2
worker processes on 256-384 px synthetic images, and the build time per 1,000 images of the
synthetic builder and of the folder builder (decode + convert + re-encode PNG). Rates are the
median of --runs timed runs after a warm-up.

    python benchmarks/data.py [--images 200] [--batch 16] [--batches 8] [--runs 5]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time


def _build_times(tmp: str, n: int):
    import tfds_cosmos
    from tfds_cosmos.synthetic import generate_example
    from tfds_cosmos.testing import save

    cfg = tfds_cosmos.synthetic_config(
        "bench", num_train=n, num_val=0, num_test=0, min_size=256, max_size=384
    )
    t0 = time.perf_counter()
    builder = tfds_cosmos.build("synthetic", config=cfg, data_dir=os.path.join(tmp, "tfds"))
    synth = time.perf_counter() - t0

    folder = os.path.join(tmp, "folder")
    for i in range(n):
        ex = generate_example(seed=1, split="train", index=i, min_size=256, max_size=384)
        save(os.path.join(folder, f"{ex['image_id']}.png"), ex["image"])
        save(os.path.join(folder, f"{ex['image_id']}_mask.png"), ex["mask"] * 255)
    t0 = time.perf_counter()
    # Hash split of n images; every (modality, anatomy) group gets some of each split.
    tfds_cosmos.build(folder, name="bench_folder", data_dir=os.path.join(tmp, "tfds"))
    fold = time.perf_counter() - t0
    return builder.as_data_source(split="train"), synth, fold


def _rate(source, *, workers, batch, batches, runs):
    from ife_jax.data import make_train_loader

    it = iter(make_train_loader(source, batch_size=batch, seed=0, num_workers=workers))
    for _ in range(max(3, 2 * workers + 1)):  # warm-up: worker start-up, first decodes
        next(it)
    rates, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batches):
            b = next(it)
        rates.append(batch * batches / (time.perf_counter() - t0))
        cpu.append((time.process_time() - c0) / (batch * batches))
    assert b["image"].shape[0] == batch
    return statistics.median(rates), statistics.median(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200, help="images to build (default 200)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=8, help="batches per timed run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--workers", default="0,1,2", help="worker counts (default 0,1,2)")
    args = p.parse_args()
    print(f"CPU cores visible: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        source, synth, fold = _build_times(tmp, args.images)
        print(f"\n| build ({args.images} images, 256-384 px) | s | s per 1,000 images |")
        print("|---|---|---|")
        print(f"| synthetic (generate + encode) | {synth:.1f} | {synth * 1000 / args.images:.0f} |")
        print(f"| folder (decode + convert + encode) | {fold:.1f} | "
              f"{fold * 1000 / args.images:.0f} |")  # fmt: skip
        print(f"(per 1,000 extrapolated linearly from {args.images} images)")
        print(f"\n| workers | images/s (batch {args.batch}, 256-384 px, median of {args.runs}) |")
        print("|---|---|")
        cpu_per_image = None
        for w in (int(x) for x in args.workers.split(",")):
            r, cpu = _rate(
                source, workers=w, batch=args.batch, batches=args.batches, runs=args.runs
            )
            print(f"| {w} | {r:.0f} |")
            if w == 0:
                cpu_per_image = cpu
        if cpu_per_image:
            per_core = 1.0 / cpu_per_image
            need = math.ceil(1500 / per_core)
            print(
                f"\nIn-process CPU time: {cpu_per_image * 1000:.1f} ms per image, i.e. "
                f"{per_core:.0f} images/s per fully available core. Feeding 1,500 images/s "
                f"needs about {need} workers on as many free cores."
            )


if __name__ == "__main__":
    main()
