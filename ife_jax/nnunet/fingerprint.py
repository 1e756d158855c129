"""The dataset fingerprint nnU-Net plans from: spacings, cropped shapes, foreground intensities.

For every training case: the bounding box of the non-zero voxels (over all channels) is the
crop; its shape, the voxel spacing and the share of the volume the crop keeps are recorded.
Per channel, the intensities of the foreground voxels (label > 0) of all cases are pooled and
summarised by mean, median, std, min, max and the 0.5 / 99.5 percentiles (``numpy`` linear
interpolation). nnU-Net draws a fixed number of foreground samples per case with replacement
before summarising; here every foreground voxel is used while the dataset has at most
``max_voxels`` of them, and a seeded sample without replacement of that many otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ife_jax.nnunet.data import Volume
from ife_jax.typed_json import from_json


@dataclass(frozen=True)
class Intensity:
    """Foreground intensity statistics of one channel."""

    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


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
    """Fingerprint of labelled cases (see the module docstring).

    Raises:
      ValueError: if there are no cases.
    """
    spacings, shapes, relative, per_channel = [], [], [], []
    for vol in volumes:
        box = nonzero_bbox(vol.image)
        crop = vol.image[(slice(None), *box)]
        label = vol.label[box]
        spacings.append(tuple(float(s) for s in vol.spacing))
        shapes.append(tuple(int(n) for n in crop.shape[1:]))
        relative.append(crop[0].size / vol.image[0].size)
        fg = label > 0
        per_channel.append([c[fg].astype(np.float64) for c in crop])
    if not spacings:
        raise ValueError("compute_fingerprint got no cases.")
    rng = np.random.default_rng(seed)
    intensity = []
    for c in range(len(channel_names)):
        values = np.concatenate([case[c] for case in per_channel])
        if values.size == 0:
            values = np.zeros(1)
        if values.size > max_voxels:
            values = rng.choice(values, max_voxels, replace=False)
        lo, med, hi = np.percentile(values, [0.5, 50.0, 99.5])
        intensity.append(
            Intensity(
                mean=float(values.mean()),
                median=float(med),
                std=float(values.std()),
                min=float(values.min()),
                max=float(values.max()),
                percentile_00_5=float(lo),
                percentile_99_5=float(hi),
            )
        )
    return Fingerprint(
        spacings=tuple(spacings),
        shapes_after_crop=tuple(shapes),
        median_relative_size_after_cropping=float(np.median(relative)),
        intensity=tuple(intensity),
        channel_names=tuple(channel_names),
    )
