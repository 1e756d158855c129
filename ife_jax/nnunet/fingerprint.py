"""The dataset fingerprint nnU-Net plans from: spacings, cropped shapes, foreground intensities.

For every training case: the bounding box of the non-zero voxels (over all channels) is the
crop; its shape, the voxel spacing and the share of the volume the crop keeps are recorded.

Intensity statistics (:func:`sample_foreground`, :func:`intensity_statistics`; the 2-D planner
:mod:`ife_jax.nnunet.image_plans` uses the same two): per channel, the foreground voxels
(label > 0) of each case are sampled, at most a per-case budget of them (all when fewer, else a
seeded sample without replacement), the samples of all cases are pooled, and mean, median, std,
min, max and the 0.5 / 99.5 percentiles (``numpy`` linear interpolation) are all read off that
one pool. This is nnU-Net v2's rule (``DatasetFingerprintExtractor``: a total budget split
evenly over the cases, every statistic from the pooled sample) except for the draw: nnU-Net
draws exactly the budget per case *with* replacement (so each case weighs the same), here a
case with fewer foreground voxels than the budget gives each of them once, so a dataset within
the budget is summarised exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ife_jax.nnunet.data import Volume
from ife_jax.typed_json import from_json


@dataclass(frozen=True)
class ChannelIntensity:
    """Intensity statistics of one channel over the dataset's foreground (the 2-D plan's)."""

    mean: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class Intensity(ChannelIntensity):
    """Foreground intensity statistics of one channel, with the median (the 3-D plan's)."""

    median: float


def sample_foreground(values: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``budget`` rows of ``values`` (N, ...): all of them when N <= budget, else a
    seeded sample without replacement (module docstring)."""
    if len(values) <= budget:
        return values
    return values[rng.choice(len(values), budget, replace=False)]


def intensity_statistics(pool: np.ndarray) -> tuple[Intensity, ...]:
    """Per-channel statistics of pooled foreground samples ``pool`` (N, C) float64, N >= 1."""
    lo, med, hi = np.percentile(pool, [0.5, 50.0, 99.5], axis=0)
    mean, std, vmin, vmax = pool.mean(0), pool.std(0), pool.min(0), pool.max(0)
    return tuple(
        Intensity(
            mean=float(mean[c]),
            median=float(med[c]),
            std=float(std[c]),
            min=float(vmin[c]),
            max=float(vmax[c]),
            percentile_00_5=float(lo[c]),
            percentile_99_5=float(hi[c]),
        )
        for c in range(pool.shape[1])
    )


@dataclass(frozen=True)
class Fingerprint:
    """Per-case spacings ``(sz, sy, sx)`` and cropped shapes, per-channel intensities."""

    spacings: tuple[tuple[float, float, float], ...]
    shapes_after_crop: tuple[tuple[int, int, int], ...]
    median_relative_size_after_cropping: float
    intensity: tuple[Intensity, ...]
    channel_names: tuple[str, ...]

    @property
    def num_cases(self) -> int:
        return len(self.spacings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "fingerprint") -> Fingerprint:
        return from_json(cls, d, where=where)


def nonzero_bbox(image: np.ndarray) -> tuple[slice, slice, slice]:
    """The bounding box of the voxels that are non-zero in any channel of (C, Z, Y, X);
    the whole volume if all are zero."""
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(out)


def compute_fingerprint(
    volumes: Iterable[Volume],
    channel_names: tuple[str, ...],
    *,
    max_voxels: int = 10_000_000,
    seed: int = 1234,
) -> Fingerprint:
    """Fingerprint of labelled cases (see the module docstring; ``max_voxels`` is the
    intensity-sample budget of the whole dataset, split evenly over the cases).

    Raises:
      ValueError: if there are no cases.
    """
    spacings, shapes, relative, foreground = [], [], [], []
    for vol in volumes:
        box = nonzero_bbox(vol.image)
        crop = vol.image[(slice(None), *box)]
        label = vol.label[box]
        spacings.append(tuple(float(s) for s in vol.spacing))
        shapes.append(tuple(int(n) for n in crop.shape[1:]))
        relative.append(crop[0].size / vol.image[0].size)
        foreground.append(crop[:, label > 0].T.astype(np.float64))  # (voxels, C)
    if not spacings:
        raise ValueError("compute_fingerprint got no cases.")
    rng = np.random.default_rng(seed)
    budget = max(1, max_voxels // len(foreground))
    pool = np.concatenate([sample_foreground(v, budget, rng) for v in foreground])
    if len(pool) == 0:
        pool = np.zeros((1, len(channel_names)))
    return Fingerprint(
        spacings=tuple(spacings),
        shapes_after_crop=tuple(shapes),
        median_relative_size_after_cropping=float(np.median(relative)),
        intensity=intensity_statistics(pool),
        channel_names=tuple(channel_names),
    )
