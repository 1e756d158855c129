"""nnU-Net's experiment planning for the ``2d`` and ``3d_fullres`` configurations.

From a :class:`~ife_jax.nnunet.fingerprint.Fingerprint` (nnU-Net v2's default planner):

1. **Target spacing** (3d_fullres): the per-axis median of the cases' spacings. If the
   coarsest axis is anisotropic (its median spacing > 3x the finest other axis) *and* holds
   few voxels (its median size x 3 < the smallest other axis), its spacing is the 10th
   percentile of that axis' spacings instead, but at least the largest other spacing (+1e-5).
2. **Axis order**: the coarsest-spacing axis goes first (``transpose_forward``), so 2-D slices
   are planes of the two finer axes; ``2d`` uses the last two target spacings.
3. **Median shape**: the per-axis median of the cropped shapes resampled to the target spacing.
4. **Patch size** starts at the aspect ratio of ``1 / spacing`` with ``256^3`` voxels (3-D) or
   ``2048^2`` pixels (2-D), clipped to the median shape.
5. **Topology** (:func:`pool_and_conv`): pool an axis while its feature map is >= 8 and its
   spacing is within a factor 2 of the finest poolable axis (pooling a lone axis only while it
   is >= 12); a stage's convolution kernel is 3 along axes within a factor 2 of the finest
   spacing, else 1 (and stays 3 once 3). The bottleneck kernel is all 3. The patch is rounded
   up to a multiple of ``2^pools`` per axis. Widths ``min(32 * 2^s, 320 (3-D) / 512 (2-D))``,
   two convolutions per stage in the encoder and the decoder.
6. **Memory**: the feature-map estimate ``E`` (:func:`feature_map_size`) must satisfy
   ``2 E / b_ref <= R`` with the reference ``R = 560e6`` (3-D) / ``85e6`` (2-D) x
   ``memory_gb / 8`` and ``b_ref`` = 2 (3-D) / 12 (2-D); while not, the patch axis
   largest relative to the median shape shrinks by its divisibility step and the topology is
   re-planned.
7. **Batch size** ``round(R / E * b_ref)``, capped so one batch
   covers at most 5 % of the dataset's voxels, and at least 2. The dataset's voxels are the
   3-D median resampled shape times the number of cases for both configurations (as nnU-Net
   v2: the ``2d`` cap counts whole volumes, not one slice per case).
8. **Normalisation** per channel: ``"ct"`` for a channel named CT (clip to the foreground
   0.5 / 99.5 percentiles, subtract the foreground mean, divide by the foreground std), else
   ``"zscore"`` per image; z-scoring uses only the non-zero region when cropping to it kept
   less than 3/4 of the volume (``use_mask_for_norm``).

IFE is not part of nnU-Net: ``ife_levels`` / ``ife_ratios`` (default: the two middle skips,
ratio 0.5) say which skip connections the network enhances when trained with ``--ife``.

Plans are plain JSON (``nnUNetPlans.json``): edit a field and the preprocessor and trainer use
it; :meth:`Plans.load` checks every field's type.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ife_jax.nnunet.fingerprint import Fingerprint, Intensity
from ife_jax.nnunet.image_plans import default_ife_levels
from ife_jax.typed_json import from_json

ANISOTROPY = 3.0
REFERENCE_VALUE = {2: 85_000_000, 3: 560_000_000}
REFERENCE_BATCH = {2: 12, 3: 2}
REFERENCE_GB = 8.0
MAX_FEATURES = {2: 512, 3: 320}
INITIAL_PATCH_VOXELS = {2: 2048**2, 3: 256**3}
MIN_FEATURE_MAP = 4
MIN_BATCH = 2
MAX_DATASET_COVERED = 0.05
CONFIGURATIONS = ("2d", "3d_fullres")


@dataclass(frozen=True)
class ConfigurationPlan:
    """One configuration (``2d`` or ``3d_fullres``): data settings and the network.

    Attributes:
      configuration: ``"2d"`` or ``"3d_fullres"``.
      spacing: the target spacing per axis of the configuration (after ``transpose_forward``).
      median_shape: the median resampled shape (same axes).
      patch_size: the training patch, divisible by the total stride.
      batch_size: patches per training step.
      features, strides, kernel_sizes: per stage; stage 0 has stride 1.
      encoder_convs, decoder_convs: convolutions per stage.
      in_channels, num_classes: image channels; 2 output classes (background, foreground).
      batch_dice: Dice over the whole batch (2d) or per sample (3d_fullres), as nnU-Net.
      ife_levels, ife_ratios: skips IFE enhances when the network is built with ``ife``.
      deep_supervision: train with the lower-resolution outputs too.
    """

    configuration: str
    spacing: tuple[float, ...]
    median_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    features: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    encoder_convs: int = 2
    decoder_convs: int = 2
    in_channels: int = 1
    num_classes: int = 2
    batch_dice: bool = False
    ife_levels: tuple[int, ...] = ()
    ife_ratios: tuple[float, ...] = ()
    deep_supervision: bool = True

    def __post_init__(self):
        dims = len(self.patch_size)
        if self.configuration not in CONFIGURATIONS:
            raise ValueError(
                f"configuration name must be one of {CONFIGURATIONS}; got {self.configuration!r}."
            )
        if dims != (2 if self.configuration == "2d" else 3):
            raise ValueError(
                f"{self.configuration}: patch_size {self.patch_size!r} has the wrong rank."
            )
        n = len(self.features)
        if len(self.strides) != n or len(self.kernel_sizes) != n or n < 1:
            raise ValueError(
                f"{self.configuration}: features, strides and kernel_sizes need one entry per "
                "stage."
            )
        if any(len(s) != dims for s in (*self.strides, *self.kernel_sizes, self.spacing)):
            raise ValueError(
                f"{self.configuration}: every stride, kernel and spacing needs {dims} entries."
            )
        if any(v != 1 for v in self.strides[0]) or any(
            v not in (1, 2) for s in self.strides for v in s
        ):
            raise ValueError(
                f"{self.configuration}: strides must be 1 or 2, stage 0 all 1; got "
                f"{self.strides!r}."
            )
        if any(p % t for p, t in zip(self.patch_size, self.total_stride, strict=True)):
            raise ValueError(
                f"{self.configuration}: patch_size {self.patch_size!r} must be divisible by "
                "the total "
                f"stride {self.total_stride!r}."
            )
        if self.batch_size < 1 or self.num_classes < 2:
            raise ValueError(f"{self.configuration}: batch_size must be >= 1 and num_classes >= 2.")
        if len(self.ife_levels) != len(self.ife_ratios) or any(
            not 0 <= lv < n - 1 for lv in self.ife_levels
        ):
            raise ValueError(
                f"{self.configuration}: ife_levels {self.ife_levels!r} must be skip levels "
                f"0..{n - 2}, one "
                f"ratio each (ife_ratios {self.ife_ratios!r})."
            )

    @property
    def num_stages(self) -> int:
        return len(self.features)

    @property
    def total_stride(self) -> tuple[int, ...]:
        return tuple(math.prod(s[a] for s in self.strides) for a in range(len(self.patch_size)))


@dataclass(frozen=True)
class Plans:
    """Everything the preprocessor, trainer and predictor need (``nnUNetPlans.json``).

    Attributes:
      dataset_name: the raw dataset's folder name.
      channel_names: one modality per channel.
      foreground: the label values that make the binary foreground.
      normalization: per channel ``"ct"``, ``"zscore"`` or ``"none"``.
      use_mask_for_norm: per channel: z-score over the non-zero region only.
      intensity: per channel foreground statistics (used by ``"ct"``).
      transpose_forward: the axis order of the preprocessed data (coarsest axis first).
      original_median_spacing: the median spacing of the raw cases (raw axis order).
      fullres_spacing: the 3-D target spacing (raw axis order).
      configurations: the ``2d`` and (for volumes) ``3d_fullres`` configurations.
    """

    dataset_name: str
    channel_names: tuple[str, ...]
    foreground: tuple[int, ...]
    normalization: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity: tuple[Intensity, ...]
    transpose_forward: tuple[int, int, int]
    original_median_spacing: tuple[float, float, float]
    fullres_spacing: tuple[float, float, float]
    configurations: tuple[ConfigurationPlan, ...]
    version: int = 1

    def __post_init__(self):
        if sorted(self.transpose_forward) != [0, 1, 2]:
            raise ValueError(
                f"transpose_forward must permute (0, 1, 2); got {self.transpose_forward!r}."
            )
        for scheme in self.normalization:
            if scheme not in ("ct", "zscore", "none"):
                raise ValueError(f"normalization must be ct, zscore or none; got {scheme!r}.")
        if "ct" in self.normalization and len(self.intensity) != len(self.channel_names):
            raise ValueError("CT normalisation needs intensity statistics for every channel.")

    @property
    def transpose_backward(self) -> tuple[int, int, int]:
        return tuple(int(i) for i in np.argsort(self.transpose_forward))

    def configuration(self, name: str) -> ConfigurationPlan:
        for c in self.configurations:
            if c.configuration == name:
                return c
        have = [c.configuration for c in self.configurations]
        raise ValueError(f"{self.dataset_name} has no configuration {name!r}; planned: {have}.")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plans:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the plans ({err}).") from None
        return from_json(cls, data, where=str(path))


# --------------------------------------------------------------------------- rules


def fullres_spacing(fp: Fingerprint) -> np.ndarray:
    """Rule 1: the 3-D target spacing (raw axis order)."""
    spacings = np.asarray(fp.spacings, np.float64)
    target = np.percentile(spacings, 50, axis=0)
    sizes = np.percentile(np.asarray(fp.shapes_after_crop, np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    other_spacings = target[others]
    aniso_spacing = target[worst] > ANISOTROPY * max(other_spacings)
    aniso_voxels = sizes[worst] * ANISOTROPY < min(sizes[others])
    if aniso_spacing and aniso_voxels:
        t = np.percentile(spacings[:, worst], 10)
        if t < max(other_spacings):
            t = max(max(other_spacings), t) + 1e-5
        target[worst] = t
    return target


def pool_and_conv(spacing, patch_size, *, min_feature_map: int = MIN_FEATURE_MAP):
    """Rule 5: ``(pools per axis, strides per stage, kernels per stage, padded patch)``."""
    dim = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(p) for p in patch_size]
    strides = [(1,) * dim]
    kernels = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [a for a in range(dim) if cur_size[a] >= 2 * min_feature_map]
        if not valid:
            break
        finest = min(cur_spacing[a] for a in valid)
        valid = [a for a in valid if cur_spacing[a] / finest < 2]
        if len(valid) == 1 and cur_size[valid[0]] < 3 * min_feature_map:
            break
        if not valid:
            break
        for a in range(dim):
            if kernel[a] != 3 and cur_spacing[a] / min(cur_spacing) < 2:
                kernel[a] = 3
        stride = [1] * dim
        for a in valid:
            stride[a] = 2
            pools[a] += 1
            cur_spacing[a] *= 2
            cur_size[a] = math.ceil(cur_size[a] / 2)
        strides.append(tuple(stride))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)
    step = [2**p for p in pools]
    patch = tuple(int(math.ceil(p / s) * s) for p, s in zip(patch_size, step, strict=True))
    return tuple(pools), tuple(strides), tuple(kernels), patch


def feature_map_size(patch, features, strides, *, num_classes: int, convs: int = 2) -> int:
    """Rule 6: the number of feature-map values nnU-Net's estimate counts for one sample.

    Every convolution contributes its output; a decoder stage adds its transposed-convolution
    output and (deep supervision) its logits, all at the resolution of its skip.
    """
    size = list(patch)
    total, skips = 0, []
    for f, st in zip(features, strides, strict=True):
        size = [n // k for n, k in zip(size, st, strict=True)]
        total += convs * f * math.prod(size)
        skips.append((f, list(size)))
    for f, size in reversed(skips[:-1]):
        n = math.prod(size)
        total += f * n  # transposed convolution
        total += convs * f * n
        total += num_classes * n
    return int(total)


def plan_configuration(
    name: str,
    spacing,
    median_shape,
    *,
    dataset_voxels: float,
    in_channels: int,
    num_classes: int = 2,
    memory_gb: float = REFERENCE_GB,
    ife_levels=None,
    ife_ratios=None,
) -> ConfigurationPlan:
    """Rules 4-7 for one configuration."""
    dim = len(spacing)
    spacing = np.asarray(spacing, np.float64)
    median_shape = np.asarray(median_shape, np.float64)
    tmp = 1.0 / spacing
    initial = [round(v) for v in tmp * (INITIAL_PATCH_VOXELS[dim] / np.prod(tmp)) ** (1 / dim)]
    initial = np.minimum(initial, median_shape).astype(int)
    pools, strides, kernels, patch = pool_and_conv(spacing, initial)

    def widths(n):
        return tuple(min(32 * 2**s, MAX_FEATURES[dim]) for s in range(n))

    def estimate(patch, strides):
        return feature_map_size(patch, widths(len(strides)), strides, num_classes=num_classes)

    reference = REFERENCE_VALUE[dim] * memory_gb / REFERENCE_GB
    est = estimate(patch, strides)
    while est / REFERENCE_BATCH[dim] * 2 > reference:
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape, strict=True)])[-1])
        trial = list(patch)
        trial[axis] -= 2 ** pools[axis]
        step = 2 ** pool_and_conv(spacing, trial)[0][axis]
        smaller = list(patch)
        smaller[axis] -= step
        if smaller[axis] < 1:
            raise ValueError(f"memory_gb={memory_gb} is too small for any {name} patch.")
        pools, strides, kernels, patch = pool_and_conv(spacing, smaller)
        est = estimate(patch, strides)
    batch = round(reference / est * REFERENCE_BATCH[dim])
    cap = round(dataset_voxels * MAX_DATASET_COVERED / np.prod(patch, dtype=np.float64))
    batch = max(min(batch, cap), MIN_BATCH)
    features = widths(len(strides))
    levels = default_ife_levels(len(features)) if ife_levels is None else tuple(ife_levels)
    ratios = (0.5,) * len(levels) if ife_ratios is None else tuple(float(r) for r in ife_ratios)
    return ConfigurationPlan(
        configuration=name,
        spacing=tuple(float(s) for s in spacing),
        median_shape=tuple(int(v) for v in median_shape),
        patch_size=tuple(int(p) for p in patch),
        batch_size=int(batch),
        features=features,
        strides=strides,
        kernel_sizes=kernels,
        in_channels=in_channels,
        num_classes=num_classes,
        batch_dice=dim == 2,
        ife_levels=levels,
        ife_ratios=ratios,
    )


def plan_experiment(
    fp: Fingerprint,
    *,
    dataset_name: str,
    foreground: tuple[int, ...],
    memory_gb: float = REFERENCE_GB,
) -> Plans:
    """The ``2d`` and ``3d_fullres`` plans of a fingerprint (module docstring)."""
    if memory_gb <= 0:
        raise ValueError(f"memory_gb must be positive; got {memory_gb!r}.")
    target = fullres_spacing(fp)
    forward = (int(np.argmax(target)),) + tuple(a for a in range(3) if a != int(np.argmax(target)))
    shapes = np.asarray(fp.shapes_after_crop, np.float64)
    spacings = np.asarray(fp.spacings, np.float64)
    resampled = np.round(shapes * spacings / target)
    median = np.median(resampled, axis=0)[list(forward)]
    spacing_t = target[list(forward)]
    voxels = float(np.prod(median, dtype=np.float64)) * fp.num_cases
    kw = dict(dataset_voxels=voxels, in_channels=len(fp.channel_names), memory_gb=memory_gb)
    configs = [plan_configuration("2d", spacing_t[1:], median[1:], **kw)]
    if median[0] > 1:
        configs.append(plan_configuration("3d_fullres", spacing_t, median, **kw))
    norm = tuple("ct" if n.upper() == "CT" else "zscore" for n in fp.channel_names)
    use_mask = tuple(s == "zscore" and fp.median_relative_size_after_cropping < 0.75 for s in norm)
    return Plans(
        dataset_name=dataset_name,
        channel_names=tuple(fp.channel_names),
        foreground=tuple(int(v) for v in foreground),
        normalization=norm,
        use_mask_for_norm=use_mask,
        intensity=fp.intensity,
        transpose_forward=forward,
        original_median_spacing=tuple(float(v) for v in np.median(spacings, axis=0)),
        fullres_spacing=tuple(float(v) for v in target),
        configurations=tuple(configs),
    )


def format_plans(plans: Plans) -> str:
    """A readable summary (what ``ife-jax nnunet plan`` prints)."""
    lines = [
        f"{plans.dataset_name}: channels {', '.join(plans.channel_names)} "
        f"(normalisation {', '.join(plans.normalization)}), foreground labels {plans.foreground}",
        f"  median spacing {plans.original_median_spacing}, target {plans.fullres_spacing}, "
        f"axis order {plans.transpose_forward}",
    ]
    for c in plans.configurations:
        lines += [
            f"  {c.configuration}: spacing {tuple(round(s, 4) for s in c.spacing)}, median shape "
            f"{c.median_shape}, patch {c.patch_size}, batch {c.batch_size}",
            f"    stages {c.num_stages}, features {c.features}",
            f"    strides {c.strides}",
            f"    kernels {c.kernel_sizes}",
            f"    IFE skips {c.ife_levels} ratios {c.ife_ratios}",
        ]
    return "\n".join(lines)
