"""nnU-Net plans for 2-D image datasets: dataset fingerprint -> plan (a JSON-able dataclass).

This is the planner of ``ife-jax train --model nnunet`` and ``ife-jax plan`` (PNG pairs or a
TFDS dataset at unit pixel spacing, whole images); ``ife-jax nnunet`` plans with
:mod:`ife_jax.nnunet.plans` instead (spacing, patches, ``2d`` and ``3d_fullres``).

The rules follow nnU-Net's 2-D configuration (Isensee et al., Nature Methods 2021) for images
with unit pixel spacing (PNG slices):

1. **Fingerprint** (:func:`compute_fingerprint`, streamed over any iterable of ``(image, mask)``
   NumPy pairs, e.g. :func:`folder_pairs` or a TFDS data source): number of images, median /
   min / max image size, channels, the foreground fraction (mean over images of the share of
   mask pixels > 0.5) and per-channel intensity statistics of the **foreground** pixels (mean,
   std, min, max and the 0.5 / 99.5 percentiles of a seeded sample of at most
   ``samples_per_image`` pixels per image: the rule of :mod:`ife_jax.nnunet.fingerprint`).
2. **Patch size**: the median image size (nnU-Net starts from a 2048^2 patch and clips it to
   the median shape, which is the median shape for any realistic 2-D data).
3. **Pooling**: along each axis, halve while the feature map is at least
   ``2 * min_feature_map`` (8) pixels, so the bottleneck is 4-7 pixels; ``n_a = max(0,
   floor(log2(size_a / 4)))`` poolings per axis. The network has ``max(n_a) + 1`` stages; an
   axis that stops early gets stride 1 in the deeper stages. The patch is rounded **up** to a
   multiple of ``2^n_a``.
4. **Widths**: ``min(32 * 2^s, 512)`` for stage ``s``; two 3x3 convolutions per stage in the
   encoder and in the decoder.
5. **Batch size** from a memory budget. The activation count of one sample is estimated as
   ``A = sum_s 3 * n_enc * P_s F_s + sum_{s < S-1} (3 + 3 * n_dec) * P_s F_s``
   (``P_s`` pixels and ``F_s`` features of stage ``s``; each convolution stores its output,
   the normalised output and the activation; a decoder stage also stores the up-convolution
   output and the concatenation). Like nnU-Net, the estimate is calibrated on a reference: the
   512 x 512 network (8 stages, ``A_ref`` = :data:`REFERENCE_ACTIVATIONS`) trains with batch 12
   in 8 GB, so ``batch = floor(12 * (memory_gb / 8) * A_ref / A)``. While that is below
   ``min_batch_size`` (2) the patch shrinks along the axis largest relative to the median shape
   by its divisibility step (``2^n_a``), re-planning the pooling each time. The batch is then
   capped so one batch covers at most 5 % of the dataset's pixels
   (``round(0.05 * N * prod(median) / prod(patch))``), and is at least ``min_batch_size``.
6. **Normalisation**: ``"zscore"`` (per image and channel, ``(x - mean) / std``: nnU-Net's
   default for every non-CT modality, and what a dataset mixing modalities needs),
   ``"ct"`` (clip to the dataset's foreground 0.5-99.5 percentiles, then subtract the
   foreground mean and divide by the foreground std: nnU-Net's CT scheme) or
   ``"rgb_to_0_1"`` (``x / 255``, nnU-Net's scheme for natural RGB images). The planner picks
   ``"ct"`` for ``modality="CT"``, ``"rgb_to_0_1"`` for ``modality="rgb"`` and ``"zscore"``
   otherwise. :func:`normalize_image` applies a plan's scheme.
7. **IFE** (not part of nnU-Net): on the two middle skip connections with ratio 0.5 by default;
   the skip levels and ratios are plan fields.

A plan is plain data: :meth:`NNUNetPlan.save` / :meth:`NNUNetPlan.load` write and read JSON
(edit it by hand, or with :func:`dataclasses.replace`), :func:`format_plan` prints it, and
:class:`ife_jax.nn.nnunet.NNUNet` builds the network from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ife_jax.nnunet.fingerprint import ChannelIntensity, intensity_statistics, sample_foreground
from ife_jax.typed_json import from_json

PLAN_VERSION = 1
NORMALIZATIONS = ("zscore", "ct", "rgb_to_0_1", "none")

#: nnU-Net's reference point: the 512 x 512 2-D network trains with this batch in this memory.
REFERENCE_BATCH = 12
REFERENCE_MEMORY_GB = 8.0


@dataclass(frozen=True)
class Fingerprint:
    """What the planner needs to know about a dataset (see :func:`compute_fingerprint`)."""

    num_images: int
    num_channels: int
    median_shape: tuple[int, int]
    min_shape: tuple[int, int]
    max_shape: tuple[int, int]
    foreground_fraction: float
    intensity: tuple[ChannelIntensity, ...]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "fingerprint") -> Fingerprint:
        """A fingerprint from :meth:`to_dict`'s output, every field type-checked."""
        return from_json(cls, d, where=where)


@dataclass(frozen=True)
class NNUNetPlan:
    """A 2-D nnU-Net configuration: everything :class:`~ife_jax.nn.nnunet.NNUNet` is built from.

    Attributes:
      patch_size: (H, W) training patch, divisible by the total stride per axis.
      batch_size: training batch size.
      features: channels per stage, shallow to deep.
      strides: per stage (sy, sx); stage 0 is (1, 1), later stages downsample by 2 along the
        axes that still pool.
      encoder_convs, decoder_convs: 3x3 convolutions per stage.
      in_channels, num_classes: image channels and output maps.
      normalization: one of ``"zscore"``, ``"ct"``, ``"rgb_to_0_1"``, ``"none"``.
      intensity: per-channel foreground statistics (needed by ``"ct"``).
      ife_levels: skip connections (0 = full resolution, ``len(features) - 2`` the deepest)
        that IFE enhances when the network is built with ``ife``.
      ife_ratios: one ratio per entry of ``ife_levels``, in [0, 1] (0: no IFE on that skip).
      deep_supervision: whether training also returns the lower-resolution decoder outputs.
      median_shape, num_images, memory_gb: the facts the plan was derived from (informative).
    """

    patch_size: tuple[int, int]
    batch_size: int
    features: tuple[int, ...]
    strides: tuple[tuple[int, int], ...]
    encoder_convs: int = 2
    decoder_convs: int = 2
    in_channels: int = 1
    num_classes: int = 1
    normalization: str = "zscore"
    intensity: tuple[ChannelIntensity, ...] = ()
    ife_levels: tuple[int, ...] = ()
    ife_ratios: tuple[float, ...] = ()
    deep_supervision: bool = True
    median_shape: tuple[int, int] | None = None
    num_images: int | None = None
    memory_gb: float | None = None
    version: int = field(default=PLAN_VERSION)

    def __post_init__(self):
        if len(self.patch_size) != 2 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be two positive sizes; got {self.patch_size!r}.")
        if len(self.features) < 1 or len(self.strides) != len(self.features):
            raise ValueError(
                f"features {self.features!r} and strides {self.strides!r} need one entry per "
                "stage each."
            )
        if tuple(self.strides[0]) != (1, 1):
            raise ValueError(f"the first stage must have stride (1, 1); got {self.strides[0]!r}.")
        for s in self.strides:
            if len(s) != 2 or any(v not in (1, 2) for v in s):
                raise ValueError(f"every stride must be a pair of 1 or 2; got {s!r}.")
        for a in (0, 1):
            if self.patch_size[a] % self.total_stride[a]:
                raise ValueError(
                    f"patch_size {self.patch_size!r} must be divisible by the total stride "
                    f"{self.total_stride!r}."
                )
        if self.batch_size < 1 or self.encoder_convs < 1 or self.decoder_convs < 1:
            raise ValueError("batch_size, encoder_convs and decoder_convs must be >= 1.")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}; got {self.normalization!r}."
            )
        if len(self.ife_levels) != len(self.ife_ratios):
            raise ValueError(
                f"ife_levels {self.ife_levels!r} and ife_ratios {self.ife_ratios!r} must have "
                "the same length."
            )
        n_skips = len(self.features) - 1
        for lv in self.ife_levels:
            if not 0 <= lv < n_skips:
                raise ValueError(
                    f"ife_levels {self.ife_levels!r}: a level must be a skip connection in "
                    f"[0, {n_skips - 1}]."
                )
        if len(set(self.ife_levels)) != len(self.ife_levels):
            raise ValueError(f"ife_levels {self.ife_levels!r} has repeated levels.")
        for r in self.ife_ratios:
            if not 0.0 <= r <= 1.0:
                raise ValueError(
                    f"ife_ratios {self.ife_ratios!r}: every ratio must be in [0, 1] "
                    "(0: no IFE on that skip)."
                )

    @property
    def num_stages(self) -> int:
        return len(self.features)

    @property
    def total_stride(self) -> tuple[int, int]:
        """Product of the strides per axis: inputs must be divisible by it."""
        return (
            math.prod(s[0] for s in self.strides),
            math.prod(s[1] for s in self.strides),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "plan") -> NNUNetPlan:
        """A plan from :meth:`to_dict`'s output (JSON lists for tuples), every field type-checked.

        Raises:
          ValueError: naming ``where`` and the field, for an unknown or missing field, a value
            of the wrong type, or an invalid plan.
        """
        return from_json(cls, d, where=where)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON (e.g. next to the checkpoints)."""
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> NNUNetPlan:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the plan ({err}).") from err
        return cls.from_dict(data, where=str(path))


# --------------------------------------------------------------------------- fingerprint


def _foreground(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    m = m.astype(np.float64)
    if m.size and m.max() > 1.0:
        m = m / 255.0
    return m > 0.5


def compute_fingerprint(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    samples_per_image: int = 10_000,
    seed: int = 0,
) -> Fingerprint:
    """Stream ``(image, mask)`` pairs once and summarise them.

    Args:
      pairs: iterable of ``image`` (H, W) or (H, W, C) and ``mask`` (H, W) or (H, W, 1);
        masks are 0/1 floats or 0/255 integers (foreground: > 0.5 after scaling to [0, 1]).
      samples_per_image: foreground pixels sampled per image for the intensity statistics.
      seed: seed of that sample.

    Returns:
      A :class:`Fingerprint`. Intensity statistics use the foreground pixels, or all pixels
      when no image has any foreground.

    Raises:
      ValueError: on an empty iterable, mismatched image/mask sizes or inconsistent channels.
    """
    rng = np.random.default_rng(seed)
    shapes, fractions = [], []
    channels = None
    samples: list[np.ndarray] = []  # foreground samples, or all pixels' while none is seen
    any_foreground = False
    for i, (image, mask) in enumerate(pairs):
        img = np.asarray(image)
        if img.ndim == 2:
            img = img[..., None]
        if img.ndim != 3:
            raise ValueError(f"image {i} must be (H, W) or (H, W, C); got shape {img.shape}.")
        fg = _foreground(mask)
        if fg.shape != img.shape[:2]:
            raise ValueError(f"pair {i}: image {img.shape[:2]} and mask {fg.shape} differ in size.")
        if channels is None:
            channels = img.shape[2]
        elif img.shape[2] != channels:
            raise ValueError(f"image {i} has {img.shape[2]} channels; earlier ones had {channels}.")
        shapes.append(img.shape[:2])
        fractions.append(float(fg.mean()))
        flat = img.reshape(-1, channels).astype(np.float64)
        if fg.any():
            if not any_foreground:
                samples, any_foreground = [], True
            samples.append(sample_foreground(flat[fg.reshape(-1)], samples_per_image, rng))
        elif not any_foreground:
            samples.append(sample_foreground(flat, samples_per_image, rng))
    if channels is None:
        raise ValueError("compute_fingerprint got no (image, mask) pairs.")
    intensity = tuple(
        ChannelIntensity(
            **{f.name: getattr(it, f.name) for f in dataclasses.fields(ChannelIntensity)}
        )
        for it in intensity_statistics(np.concatenate(samples, 0))
    )
    arr = np.asarray(shapes)
    return Fingerprint(
        num_images=len(shapes),
        num_channels=int(channels),
        median_shape=tuple(int(round(v)) for v in np.median(arr, 0)),
        min_shape=tuple(int(v) for v in arr.min(0)),
        max_shape=tuple(int(v) for v in arr.max(0)),
        foreground_fraction=float(np.mean(fractions)),
        intensity=intensity,
    )


def folder_pairs(folder: str | os.PathLike) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(image, mask)`` arrays for every ``X.png`` with a ``X_mask.png`` beside it, by name.

    Images are read as the model sees them, by :func:`ife_jax.data.images.read_image` (uint8
    (H, W, 3); 16-bit images rescaled by their own min and max), masks by
    :func:`~ife_jax.data.images.read_mask` (uint8 (H, W) 0/1), so the plan's channels and
    intensity statistics are those of the training input. Pairs are matched by file name, never
    by list position.

    Raises:
      ValueError: if the folder holds no pair, or naming an image or mask that cannot be read
        (empty, truncated, not an image).
    """
    from ife_jax.data.images import read_image, read_mask

    folder = Path(folder)
    images = sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_mask"))
    pairs = [(p, p.with_name(p.stem + "_mask.png")) for p in images]
    pairs = [(i, m) for i, m in pairs if m.exists()]
    if not pairs:
        raise ValueError(f"{folder}: no X.png / X_mask.png pairs found.")
    for ip, mp in pairs:
        yield read_image(ip), read_mask(mp)[0]


# --------------------------------------------------------------------------- planning


def pooling(patch: Sequence[int], *, min_feature_map: int = 4) -> tuple[int, int]:
    """Poolings per axis: halve while the feature map is >= ``2 * min_feature_map``."""
    out = []
    for size in patch:
        n, cur = 0, float(size)
        while cur >= 2 * min_feature_map:
            cur /= 2
            n += 1
        out.append(n)
    return tuple(out)


def _round_up(patch, pools):
    return tuple(int(math.ceil(p / 2**n) * 2**n) for p, n in zip(patch, pools, strict=True))


def _network(patch, *, min_feature_map, base_features, max_features):
    pools = pooling(patch, min_feature_map=min_feature_map)
    patch = _round_up(patch, pools)
    n_stages = max(pools) + 1
    strides = ((1, 1),) + tuple(
        tuple(2 if s <= pools[a] else 1 for a in (0, 1)) for s in range(1, n_stages)
    )
    features = tuple(min(base_features * 2**s, max_features) for s in range(n_stages))
    return patch, pools, strides, features


def activation_count(
    patch: Sequence[int],
    features: Sequence[int],
    strides: Sequence[Sequence[int]],
    *,
    encoder_convs: int = 2,
    decoder_convs: int = 2,
) -> int:
    """Stored activations of one training sample (the planner's memory estimate, module doc)."""
    h, w = patch
    total = 0
    for s, (f, st) in enumerate(zip(features, strides, strict=True)):
        h, w = h // st[0], w // st[1]
        total += 3 * encoder_convs * h * w * f
        if s < len(features) - 1:
            total += (3 + 3 * decoder_convs) * h * w * f
    return total


#: Activations of the reference network: 512 x 512, 8 stages, widths 32..512.
REFERENCE_ACTIVATIONS = activation_count(
    (512, 512),
    (32, 64, 128, 256, 512, 512, 512, 512),
    ((1, 1),) + ((2, 2),) * 7,
)


def default_ife_levels(num_stages: int) -> tuple[int, ...]:
    """The two middle skip connections of a network with ``num_stages`` stages."""
    n_skips = num_stages - 1
    start = max(0, (n_skips - 2) // 2)
    return tuple(range(start, min(start + 2, n_skips)))


def plan_from_fingerprint(
    fingerprint: Fingerprint,
    *,
    num_classes: int = 1,
    in_channels: int | None = None,
    memory_gb: float = REFERENCE_MEMORY_GB,
    modality: str | None = None,
    normalization: str | None = None,
    base_features: int = 32,
    max_features: int = 512,
    min_feature_map: int = 4,
    encoder_convs: int = 2,
    decoder_convs: int = 2,
    min_batch_size: int = 2,
    max_dataset_fraction: float = 0.05,
    ife_levels: Sequence[int] | None = None,
    ife_ratios: Sequence[float] | None = None,
    deep_supervision: bool = True,
) -> NNUNetPlan:
    """The 2-D nnU-Net plan for a dataset (rules in the module docstring).

    Args:
      fingerprint: from :func:`compute_fingerprint`.
      num_classes: output maps (1 for dichotomous segmentation).
      in_channels: network input channels (default: the fingerprint's).
      memory_gb: accelerator memory the training may use (nnU-Net's default target is 8 GB).
      modality: ``"CT"`` selects CT normalisation, ``"rgb"`` the 0-1 scaling of natural images,
        anything else z-scoring.
      normalization: force a scheme instead.
      ife_levels, ife_ratios: IFE skip levels and ratios (default: the two middle levels, 0.5).

    Returns:
      An :class:`NNUNetPlan`.
    """
    if memory_gb <= 0:
        raise ValueError(f"memory_gb must be positive; got {memory_gb!r}.")
    if min_batch_size < 1:
        raise ValueError(f"min_batch_size must be >= 1; got {min_batch_size!r}.")
    median = tuple(int(v) for v in fingerprint.median_shape)
    conv_kw = dict(encoder_convs=encoder_convs, decoder_convs=decoder_convs)
    net_kw = dict(
        min_feature_map=min_feature_map, base_features=base_features, max_features=max_features
    )
    scale = REFERENCE_BATCH * (memory_gb / REFERENCE_MEMORY_GB) * REFERENCE_ACTIVATIONS

    patch = median
    patch, pools, strides, features = _network(patch, **net_kw)

    def batch_for(patch, features, strides):
        return math.floor(scale / activation_count(patch, features, strides, **conv_kw))

    while batch_for(patch, features, strides) < min_batch_size:
        ratios = [p / m for p, m in zip(patch, median, strict=True)]
        axis = int(np.argsort(ratios, kind="stable")[-1])  # ties: the last axis, as nnU-Net
        step = 2 ** pools[axis]
        if patch[axis] - step < 1:
            raise ValueError(
                f"memory_gb={memory_gb} is too small for a batch of {min_batch_size} at any patch."
            )
        patch = tuple(p - step if a == axis else p for a, p in enumerate(patch))
        patch, pools, strides, features = _network(patch, **net_kw)
    batch = batch_for(patch, features, strides)
    cap = round(
        max_dataset_fraction * fingerprint.num_images * math.prod(median) / math.prod(patch)
    )
    batch = max(min(batch, cap), min_batch_size)

    if normalization is None:
        mod = (modality or "").lower()
        normalization = {"ct": "ct", "rgb": "rgb_to_0_1"}.get(mod, "zscore")
    levels = default_ife_levels(len(features)) if ife_levels is None else tuple(ife_levels)
    ratios = (0.5,) * len(levels) if ife_ratios is None else tuple(float(r) for r in ife_ratios)
    return NNUNetPlan(
        patch_size=patch,
        batch_size=int(batch),
        features=features,
        strides=strides,
        encoder_convs=encoder_convs,
        decoder_convs=decoder_convs,
        in_channels=int(in_channels or fingerprint.num_channels),
        num_classes=num_classes,
        normalization=normalization,
        intensity=fingerprint.intensity,
        ife_levels=levels,
        ife_ratios=ratios,
        deep_supervision=deep_supervision,
        median_shape=median,
        num_images=fingerprint.num_images,
        memory_gb=float(memory_gb),
    )


def plan_dataset(
    source: str | os.PathLike | Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    samples_per_image: int = 10_000,
    seed: int = 0,
    **plan_kwargs,
) -> NNUNetPlan:
    """Fingerprint a dataset and plan it: a folder of ``X.png`` / ``X_mask.png`` pairs, or any
    iterable of ``(image, mask)`` NumPy pairs (e.g. a generator over a TFDS data source).

    Keyword arguments go to :func:`plan_from_fingerprint` (``memory_gb``, ``modality``, ...).

    Example:
      >>> plan = plan_dataset("data/train", memory_gb=16)        # X.png + X_mask.png pairs
      >>> src = tfds.data_source("cosmos_folder", split="train")  # or any random-access source
      >>> plan = plan_dataset((ex["image"], ex["mask"]) for ex in src)
      >>> print(format_plan(plan)); plan.save("workdir/plan.json")
    """
    pairs = folder_pairs(source) if isinstance(source, str | os.PathLike) else source
    fp = compute_fingerprint(pairs, samples_per_image=samples_per_image, seed=seed)
    return plan_from_fingerprint(fp, **plan_kwargs)


def dataset_pairs(
    dataset: str, split: str, *, data_dir: str | None = None, limit: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(image (H, W, 3) uint8, mask (H, W) uint8)`` pairs of a TFDS dataset's split."""
    from ife_jax.train.datasets import load_examples

    for ex in load_examples(dataset, split, data_dir=data_dir, limit=limit):
        yield ex.image, ex.mask


def make_plan(
    dataset: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    limit: int | None = None,
    **plan_kwargs,
) -> NNUNetPlan:
    """Fingerprints ``dataset`` (a folder of ``X.png``/``X_mask.png`` pairs, or a TFDS dataset
    name) and returns its :class:`NNUNetPlan`.

    ``plan_kwargs`` go to :func:`plan_from_fingerprint` (``memory_gb``, ``modality``, ...).
    """
    if Path(dataset).is_dir():
        return plan_dataset(dataset, **plan_kwargs)
    pairs = dataset_pairs(dataset, split, data_dir=data_dir, limit=limit)
    return plan_dataset(pairs, **plan_kwargs)


def format_plan(plan: NNUNetPlan) -> str:
    """A human-readable summary of a plan (what ``ife-jax plan`` prints)."""
    bottleneck = tuple(p // s for p, s in zip(plan.patch_size, plan.total_stride, strict=True))
    lines = [
        "nnU-Net 2-D plan",
        f"  median image size : {_xy(plan.median_shape)} over {plan.num_images} images"
        if plan.median_shape
        else "  median image size : -",
        f"  patch size        : {_xy(plan.patch_size)}",
        f"  batch size        : {plan.batch_size}"
        + (f" (memory budget {plan.memory_gb:g} GB)" if plan.memory_gb else ""),
        f"  stages            : {plan.num_stages} (total stride {_xy(plan.total_stride)}, "
        f"bottleneck {_xy(bottleneck)})",
        f"  convs per stage   : {plan.encoder_convs} encoder, {plan.decoder_convs} decoder",
        f"  channels          : in {plan.in_channels}, out {plan.num_classes}",
        f"  normalisation     : {plan.normalization}",
        f"  deep supervision  : {'yes' if plan.deep_supervision else 'no'}",
        "",
        "  stage  stride  features  feature map  IFE on skip",
    ]
    h, w = plan.patch_size
    for s, (f, st) in enumerate(zip(plan.features, plan.strides, strict=True)):
        h, w = h // st[0], w // st[1]
        ife = "-"
        if s in plan.ife_levels:
            ife = f"ratio {plan.ife_ratios[plan.ife_levels.index(s)]:g}"
        elif s == plan.num_stages - 1:
            ife = "(bottleneck)"
        lines.append(f"  {s:>5}  {_xy(st):>6}  {f:>8}  {_xy((h, w)):>11}  {ife}")
    for c, it in enumerate(plan.intensity):
        lines.append(
            f"  intensity ch{c}: mean {it.mean:.4g}, std {it.std:.4g}, "
            f"p0.5 {it.percentile_00_5:.4g}, p99.5 {it.percentile_99_5:.4g} (foreground)"
        )
    return "\n".join(lines)


def _xy(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


def normalize_image(image: np.ndarray, plan: NNUNetPlan) -> np.ndarray:
    """Apply the plan's intensity normalisation to one (H, W) or (H, W, C) image (float32).

    ``"zscore"``: per channel ``(x - mean) / max(std, 1e-8)`` over the image; ``"ct"``: clip to
    the plan's foreground [p0.5, p99.5] per channel, then ``(x - mean) / max(std, 1e-8)`` with
    the plan's foreground mean and std; ``"rgb_to_0_1"``: ``x / 255``; ``"none"``: unchanged.
    """
    x = np.asarray(image, np.float32)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[..., None]
    if plan.normalization == "zscore":
        mean = x.mean(axis=(0, 1), keepdims=True)
        std = x.std(axis=(0, 1), keepdims=True)
        x = (x - mean) / np.maximum(std, 1e-8)
    elif plan.normalization == "ct":
        if len(plan.intensity) != x.shape[-1]:
            raise ValueError(
                f"CT normalisation needs intensity statistics for {x.shape[-1]} channels; the "
                f"plan has {len(plan.intensity)}."
            )
        lo = np.array([c.percentile_00_5 for c in plan.intensity], np.float32)
        hi = np.array([c.percentile_99_5 for c in plan.intensity], np.float32)
        mean = np.array([c.mean for c in plan.intensity], np.float32)
        std = np.array([c.std for c in plan.intensity], np.float32)
        x = (np.clip(x, lo, hi) - mean) / np.maximum(std, 1e-8)
    elif plan.normalization == "rgb_to_0_1":
        x = x / 255.0
    return x[..., 0] if squeeze else x
