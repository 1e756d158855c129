"""The training configuration: one typed dataclass and the presets of the reference recipe.

The presets reproduce the published training recipe of each network (Adam 1e-4, the learning
rate divided by 10 every half of the reference's epochs, gradient-norm clipping at 1.0, each
batch resized to one of six training sizes, evaluation at 224 x 224, the structure loss).
``NAME+c`` and ``NAME+e`` add curvature or entropy IFE with the ratios of the network's Table 1
row (:data:`TABLE1_RATIOS`). ``tiny`` and ``demo`` are small variants for smoke tests and the
built-in demonstration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from typing import Any

from ife_jax._recipe import AUGMENTATIONS, EVAL_SIZE, TRAIN_SIZES
from ife_jax.ops._checks import CRITERIA, check_ife

MODELS = ("unet", "deeplabv3plus", "sinetv2", "nnunet")
IFE_CRITERIA = (None, *CRITERIA)
PRECISIONS = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "sgd")
#: ``step``: the reference's step decay; ``cosine``: a half cosine from the rate to 0 over the run.
LR_SCHEDULES = ("step", "cosine")
#: The reference's six training sizes: each batch is resized to one of them.
REFERENCE_TRAIN_SIZES = TRAIN_SIZES
#: Networks whose backbone can start from a state dict (``pretrained_backbone``).
PRETRAINED_BACKBONES = {"deeplabv3plus": "ResNet-50/101", "sinetv2": "Res2Net-50 v1b"}
#: The IFE ratios of each Table 1 row of the paper, per network and criterion (shallow to deep).
#: UNet: Table 1's +C and +E rows are the (0.75, 0.50) and (0.50, 0.50) rows of Table 2.
#: DeepLabV3+: the paper puts IFE on the low-level features only (Sec. 3), as the authors'
#: DeepLabV3+ test script builds it (ratios [0.75, 0]). SINetV2: the reference's defaults.
#: nnU-Net takes its ratios from the plan (0.5 on the two middle skips; no code was published).
TABLE1_RATIOS: dict[str, dict[str, tuple[float, ...] | None]] = {
    "unet": {"curvature": (0.75, 0.5), "entropy": (0.5, 0.5)},
    "deeplabv3plus": {"curvature": (0.75, 0.0), "entropy": (0.75, 0.0)},
    "sinetv2": {"curvature": (0.75, 0.75, 1.0), "entropy": (0.75, 0.75, 1.0)},
    "nnunet": {"curvature": None, "entropy": None},
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Saved as ``config.json`` in the workdir.

    Attributes:
      model: network, one of ``MODELS``.
      ife: ``None`` (plain network), ``"curvature"`` or ``"entropy"``.
      ratios: IFE ratios, shallow to deep, each in [0, 1] (0 switches IFE off at that
        insertion point); ``None`` takes the network's default.
      model_kwargs: extra keyword arguments of the network constructor (e.g. ``widths``).
      dataset: dataset name as ``tfds_cosmos.load`` takes it (``"synthetic/small"``,
        ``"cosmos55k"``, ``"dmis_folder/<name>"``, ...).
      data_dir: TFDS data directory; ``None`` uses the TFDS default.
      train_split, eval_split: split names.
      max_train_examples, max_eval_examples: use only the first n examples (``None``: all).
      batch_size: global batch size (over all devices and processes).
      epochs: number of passes over the training split.
      optimizer: ``"adam"`` (the reference recipe) or ``"sgd"`` (SGD with momentum 0.9).
      learning_rate: the optimiser's initial learning rate.
      lr_schedule: ``"step"`` (the reference: constant within an epoch, multiplied by
        ``decay_factor`` every ``decay_every_epochs``) or ``"cosine"`` (per step ``t`` of ``T``
        in the run: ``learning_rate * (1 + cos(pi * t / T)) / 2``, annealed towards 0 at the end;
        the decay fields are then unused).
      decay_factor: the learning rate is multiplied by this at each decay boundary.
      decay_every_epochs: epochs between decays (the reference's ``decay_epoch``; the rate of
        0-based epoch ``e`` is ``learning_rate * decay_factor ** (e // decay_every_epochs)``);
        ``None`` uses half the epochs.
      grad_clip_norm: global gradient-norm clip (``None``: no clipping).
      pretrained_backbone: a state dict (``.safetensors``, ``.npz`` or ``.pth``) the backbone
        starts from: torchvision ResNet-50/101 names for DeepLabV3+, Res2Net-50 v1b names for
        SINetV2 (:data:`PRETRAINED_BACKBONES`); ``None`` starts from random weights.
      pretrained_backbone_sha256: the SHA-256 of that file, filled in when a run starts (a run
        given a value checks the file against it).
      train_sizes: square sizes each training batch is resized to (one per batch, at random).
      augment: the training augmentation (:data:`ife_jax.data.transforms.AUGMENTATIONS`):
        ``"reference"`` (the reference recipe: intensity, flips, rotation by up to 90 degrees),
        ``"no_rotation"`` (the same without the rotation) or ``"none"`` (padding and resize).
      eval_size: square size of the evaluation transform.
      precision: compute dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
      seed: seeds the parameters, the data order, augmentation and dropout.
      eval_every_epochs: validation every this many epochs (and after the last one).
      checkpoint_every_epochs: checkpoint at the end of every this many epochs (and of the last
        one); a killed run resumes from the newest checkpoint and redoes the epochs after it. A
        new best validation Dice between checkpoints is held in memory and written to ``best/``
        with the next checkpoint, so ``best/`` always holds the best of the epochs up to the
        newest checkpoint.
      checkpoint_every_steps: also checkpoint every this many steps within an epoch.
      keep_checkpoints: how many recent checkpoints to keep (the best one is kept separately).
      num_workers: data-loading worker processes (0: in the main process).
      precise_bn_examples: before each validation, replace the BatchNorm running averages by
        the exact mean and variance of each BatchNorm's input over the first this many
        training examples (rounded down to whole batches; evaluation transform, no
        augmentation; the network in training mode at ``batch_size``:
        :mod:`ife_jax.train.precise_bn`). Validation, the best checkpoint and the test scores
        then use those statistics; the weights train exactly as without. 0 (the reference)
        keeps the running averages.
    """

    model: str = "unet"
    ife: str | None = None
    ratios: tuple[float, ...] | None = None
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "synthetic"
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "val"
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    batch_size: int = 16
    epochs: int = 100
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    lr_schedule: str = "step"
    decay_factor: float = 0.1
    decay_every_epochs: int | None = None
    grad_clip_norm: float | None = 1.0
    pretrained_backbone: str | None = None
    pretrained_backbone_sha256: str | None = None
    train_sizes: tuple[int, ...] = REFERENCE_TRAIN_SIZES
    augment: str = "reference"
    eval_size: int = EVAL_SIZE
    precision: str = "float32"
    seed: int = 0
    eval_every_epochs: int = 1
    checkpoint_every_epochs: int = 1
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 2
    num_workers: int = 0
    precise_bn_examples: int = 0

    def __post_init__(self):
        _check_types(self)
        # Normalise sequences so that a config read back from JSON compares equal.
        if self.ratios is not None:
            object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        object.__setattr__(self, "train_sizes", tuple(int(s) for s in self.train_sizes))
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model_kwargs.items()}
        object.__setattr__(self, "model_kwargs", kwargs)
        self.validate()

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first bad field."""

        def bad(name, why):
            raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

        if self.model not in MODELS:
            bad("model", f"must be one of {', '.join(MODELS)}")
        check_ife(self.ife, self.ratios, name="TrainConfig")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}")
        if self.precision not in PRECISIONS:
            bad("precision", f"must be one of {', '.join(PRECISIONS)}")
        if self.augment not in AUGMENTATIONS:
            bad("augment", f"must be one of {', '.join(AUGMENTATIONS)}")
        for name in (
            "batch_size",
            "epochs",
            "eval_size",
            "eval_every_epochs",
            "checkpoint_every_epochs",
            "keep_checkpoints",
        ):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if self.num_workers < 0:
            bad("num_workers", "must be >= 0")
        if self.precise_bn_examples and self.precise_bn_examples < self.batch_size:
            bad("precise_bn_examples", f"must be 0 (off) or at least batch_size={self.batch_size}")
        if not self.train_sizes or min(self.train_sizes) < 16:
            bad("train_sizes", "must be a non-empty list of sizes >= 16")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            bad("learning_rate", "must be a finite number > 0")
        if not 0.0 < self.decay_factor <= 1.0:
            bad("decay_factor", "must lie in (0, 1]")
        if self.decay_every_epochs is not None and self.decay_every_epochs < 1:
            bad("decay_every_epochs", "must be >= 1 or None")
        if self.pretrained_backbone is not None and self.model not in PRETRAINED_BACKBONES:
            bad(
                "pretrained_backbone",
                f"only {', '.join(PRETRAINED_BACKBONES)} have a pretrained backbone "
                f"({', '.join(PRETRAINED_BACKBONES.values())}); model={self.model!r} has none",
            )
        if self.pretrained_backbone_sha256 is not None and self.pretrained_backbone is None:
            bad("pretrained_backbone_sha256", "is set but pretrained_backbone is not")
        if self.grad_clip_norm is not None and not (
            math.isfinite(self.grad_clip_norm) and self.grad_clip_norm > 0
        ):
            bad("grad_clip_norm", "must be a finite number > 0, or None")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            bad("checkpoint_every_steps", "must be >= 1 or None")
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                bad(name, "must be >= 1 or None")

    @property
    def decay_every(self) -> int:
        """Epochs between decays: ``decay_every_epochs``, or half the epochs when it is None."""
        return self.decay_every_epochs or max(1, self.epochs // 2)

    @property
    def decay_epochs(self) -> tuple[int, ...]:
        """Epochs (0-based, at their start) where the learning rate is multiplied by the factor."""
        return tuple(range(self.decay_every, self.epochs, self.decay_every))

    def epoch_learning_rate(self, epoch: int) -> float:
        """The reference's rate of 0-based ``epoch``: ``lr * decay ** (epoch // decay_every)``."""
        return self.learning_rate * self.decay_factor ** (epoch // self.decay_every)

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))


def _type_ok(value, kind) -> bool:
    """Whether ``value`` (as given, or as read from JSON) has the annotated type ``kind``."""
    if kind is Any:
        return True
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return any(_type_ok(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if isinstance(value, bool):
        return kind is bool
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    if kind is str:
        return isinstance(value, str)
    if typing.get_origin(kind) is tuple:  # tuple[X, ...]; JSON gives a list
        (item, _) = typing.get_args(kind)
        return isinstance(value, tuple | list) and all(_type_ok(v, item) for v in value)
    if typing.get_origin(kind) is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    raise TypeError(f"no type check for {kind}")


def _check_types(config: TrainConfig) -> None:
    """Raises ``ValueError`` naming the first field whose value has the wrong type (a string
    ``"4"`` where a number belongs, a number where a list belongs, ...)."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if not _type_ok(value, hints[field.name]):
            kind = hints[field.name]
            kind = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
            raise ValueError(
                f"{field.name}={value!r}: must be of type {kind}, not {type(value).__name__}"
            )


def _reference(
    model: str, epochs: int, decay_every: int, batch_size: int, **model_kwargs
) -> TrainConfig:
    return TrainConfig(
        model=model,
        epochs=epochs,
        decay_every_epochs=decay_every,
        batch_size=batch_size,
        model_kwargs=model_kwargs,
    )


#: The published recipe per network.
_REFERENCE = {
    # UNet: 100 epochs, decay every 50, batch 16 in the reference code (32 in the paper).
    "unet": _reference("unet", 100, 50, 16),
    # DeepLabV3+ (ResNet-101, as the reference) and SINetV2: 60 epochs, decay every 30, batch 32.
    "deeplabv3plus": _reference("deeplabv3plus", 60, 30, 32, backbone="resnet101"),
    "sinetv2": _reference("sinetv2", 60, 30, 32),
    # nnUNet: not published with IFE; the UNet recipe (its plan fixes the network).
    "nnunet": _reference("nnunet", 100, 50, 16),
}

#: The published recipe per network, with Table 1's IFE variants, then the small variants.
PRESETS: dict[str, TrainConfig] = {
    **_REFERENCE,
    **{
        f"{name}+{ife[0]}": config.replace(ife=ife, ratios=TABLE1_RATIOS[name][ife])
        for name, config in _REFERENCE.items()
        for ife in ("curvature", "entropy")
    },
    # A few seconds on a CPU: a narrow UNet on a handful of 32 x 32 synthetic images.
    "tiny": TrainConfig(
        model="unet",
        dataset="synthetic/tiny",
        model_kwargs={"widths": (4, 8, 16, 32, 64)},
        max_train_examples=8,
        max_eval_examples=4,
        batch_size=4,
        epochs=2,
        train_sizes=(32, 48),
        eval_size=32,
        learning_rate=1e-3,
    ),
    # The built-in demonstration: a narrow UNet on a 2-core CPU, trained to a plateau. At 80 px
    # its test DSC stopped at 82-86% (small lesions span a few pixels), hence 96 px. Batch 4
    # costs about 1.15x batch 8 per image on a CPU and gives twice the updates; the cosine
    # schedule anneals the rate towards 0, so the last epochs settle instead of moving by the
    # 1-3 points of Dice that the step decay left (14 epochs, batch 8, 1e-3 then 1e-4: 3 of 9
    # runs gained > 1 point in their last quarter; 8 epochs of this recipe: 2 of 9). A
    # checkpoint every 4 epochs instead of every epoch: a killed run redoes at most 4 epochs.
    # The rate: in the same 10 epochs, 1e-3 left 2 of 9 runs gaining >= 1 point of best
    # validation Dice in their last quarter, 2e-3 one of 9 (in most repetitions), 3e-3 none
    # of the demo's 9 and 2 of the 9 of seeds 3-5 (the README's demo section). Precise
    # BatchNorm statistics over 32 training images before each validation: the running
    # averages of batch-4 training moved validation Dice by about a point with the weights
    # frozen; with the statistics recomputed, 17 of 18 runs (seeds 0-5) converged, against
    # 16 of 18 with the running averages (64 images: 17 of 18 as well, at twice the cost).
    # The reference augmentation without its rotation (by up to 90 degrees, zero corners): 18
    # of 18 runs (seeds 0-5) converged, and 15 of 18 when the last quarter is counted as the
    # last 3 epochs (9 of 18 with the rotation), at the same test DSC and 5% less wall time.
    # Epoch counts whose quarter is whole missed as often (8 epochs: 2 of 9; 12 over 132
    # images: 1 of 18; 12 over all 160: 4 of 18), and so did validation on averaged weights
    # over the last 3 epochs (2 of 18); the README's demo section has the table.
    "demo": TrainConfig(
        model="unet",
        dataset="synthetic/small",
        model_kwargs={"widths": (8, 16, 32, 64, 128)},
        max_train_examples=160,
        max_eval_examples=None,
        batch_size=4,
        epochs=10,
        lr_schedule="cosine",
        train_sizes=(96,),
        augment="no_rotation",
        eval_size=96,
        learning_rate=3e-3,
        checkpoint_every_epochs=4,
        precise_bn_examples=32,
    ),
}


def preset(name: str, **changes) -> TrainConfig:
    """The named preset (``PRESETS``) with ``changes`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**changes)
