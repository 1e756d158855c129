"""Time the nine DMIS metrics per image on realistic (blobby) masks, on one CPU core.

Prints ms per image for each metric alone and for ``compute_all`` (both conventions) at
256 x 256 and 512 x 512, then the time to evaluate 1,000 images (extrapolated from a measured
batch). Median of >= 5 timed passes after a warm-up pass. OpenCV is limited to one thread.

    python benchmarks/metrics.py [--images 20] [--repeats 5] [--batch 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from ife_jax import metrics as M
from ife_jax.metrics import report as _report  # noqa: F401  (loads M.report)


def lobed_object(rng, size):
    """A smooth star-shaped organ-like mask, plus sometimes a second smaller part."""
    yy, xx = np.mgrid[:size, :size]
    m = np.zeros((size, size), bool)
    for k in range(1 + (rng.random() < 0.4)):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.08, 0.22) * size / (1 + k)
        ang = np.arctan2(yy - cy, xx - cx)
        rad = r * (1 + 0.2 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.08 * np.sin(7 * ang + 1))
        m |= np.hypot(yy - cy, xx - cx) < rad
    return m


def prediction(rng, gt):
    """A plausible probability map: blurred, deformed gt plus smooth noise and stray blobs."""
    size = gt.shape[0]
    shift = rng.integers(-4, 5, 2)
    p = gaussian_filter(np.roll(gt, shift, axis=(0, 1)).astype(float), size / 128)
    p += 0.35 * gaussian_filter(rng.standard_normal(gt.shape), size / 48) * size / 48
    return np.clip(p, 0, 1)


def make_set(n, size, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        g = lobed_object(rng, size)
        out.append((prediction(rng, g), g))
    return out


def time_per_image(fn, data, repeats):
    for p, g in data:  # warm-up
        fn(p, g)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p, g in data:
            fn(p, g)
        runs.append((time.perf_counter() - t0) / len(data))
    return 1e3 * statistics.median(runs)


METRICS = {
    "con": M.conformity,
    "dsc": M.dice,
    "jc": M.jaccard,
    "f1": M.f1,
    "hce": M.hce,
    "mae": M.mae,
    "hd": M.hausdorff,
    "hd95": M.hausdorff95,
    "asd (ASSD)": M.assd,
    "rvd": M.rvd,
    "hce (paper, 64x64)": lambda p, g: M.hce(p, g, size=M.PAPER_HCE_SIZE),
    "compute_all standard": lambda p, g: M.compute_all(p, g),
    "compute_all paper": lambda p, g: M.compute_all(p, g, convention="paper"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20, help="images per size for the table")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=100, help="images timed for the 1,000 estimate")
    args = ap.parse_args()
    cv2.setNumThreads(1)

    sizes = (256, 512)
    sets = {s: make_set(args.images, s, seed=s) for s in sizes}
    mean_dsc = {s: np.mean([M.dice(p, g) for p, g in sets[s]]) for s in sizes}
    print(f"{args.images} images per size, median of {args.repeats} passes, OpenCV 1 thread")
    print(
        "mean DSC of the synthetic predictions: "
        + ", ".join(f"{s}x{s}: {mean_dsc[s]:.3f}" for s in sizes)
    )
    print(f"{'metric':<22}" + "".join(f"{f'{s}x{s} ms':>14}" for s in sizes))
    print("-" * (22 + 14 * len(sizes)))
    for name, fn in METRICS.items():
        row = [time_per_image(fn, sets[s], args.repeats) for s in sizes]
        print(f"{name:<22}" + "".join(f"{v:>14.2f}" for v in row))

    batch = make_set(args.batch, 256, seed=1)
    for conv in ("standard", "paper"):
        t0 = time.perf_counter()
        M.report.evaluate_masks(
            [(f"CT_Liver_{i}.png", p, g) for i, (p, g) in enumerate(batch)],
            convention=conv,
            progress=False,
        )
        dt = time.perf_counter() - t0
        print(
            f"evaluate_masks ({conv}), 256x256: {args.batch} images measured in {dt:.2f} s "
            f"-> 1,000 images ~ {dt * 1000 / args.batch:.1f} s (extrapolated)"
        )


if __name__ == "__main__":
    main()
