"""Synthetic DMIS data: no files needed, deterministic from a seed, any size."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from tfds_cosmos.core.builder import CodePathMixin, dmis_features
from tfds_cosmos.core.images import encode_png
from tfds_cosmos.synthetic.generate import generate_example


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """How many examples of which size range, from which seed.

    Attributes:
      seed: every example is a pure function of (seed, split, index).
      num_train, num_val, num_test: split sizes (a zero-sized split is omitted).
      min_size, max_size: height and width drawn independently in this range (pixels).
    """

    seed: int = 0
    num_train: int = 800
    num_val: int = 100
    num_test: int = 200
    min_size: int = 128
    max_size: int = 384


def synthetic_config(
    name: str,
    *,
    seed: int = 0,
    num_train: int = 800,
    num_val: int = 100,
    num_test: int = 200,
    min_size: int = 128,
    max_size: int = 384,
    version: str = "1.2.0",
) -> SyntheticConfig:
    """A custom config, e.g. ``Synthetic(config=synthetic_config("big", num_train=20_000))``."""
    for key, v in dict(num_train=num_train, num_val=num_val, num_test=num_test).items():
        if v < 0:
            raise ValueError(f"{key} must be >= 0, got {v}")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    return SyntheticConfig(
        name=name,
        version=version,
        description=(
            f"seed {seed}, {num_train}/{num_val}/{num_test} examples, {min_size}-{max_size} px"
        ),
        seed=seed,
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        min_size=min_size,
        max_size=max_size,
    )


class Synthetic(CodePathMixin, tfds.core.GeneratorBasedBuilder):
    """Procedural DMIS-like images (5 pseudo-modalities, 3 shape families, one object each).

    Configs: ``default`` (800/100/200 images, 128-384 px), ``small`` (160/96/32, 128-384 px),
    ``tiny`` (16/8/8, 32-64 px, for tests). ``file_format`` defaults to ``"array_record"``.
    """

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "MRI and XRay objects stand out from the bias field and rib bands: a UNet "
        "could not infer many of their masks from the image.",
        "1.2.0": "small: 96 validation images (was 32), so that a validation curve measures "
        "training, not the noise of 32 images; every other image is unchanged.",
    }
    BUILDER_CONFIGS = [
        synthetic_config("default"),
        synthetic_config("small", num_train=160, num_val=96, num_test=32),
        synthetic_config("tiny", num_train=16, num_val=8, num_test=8, min_size=32, max_size=64),
    ]

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Procedural DMIS-like images with one object each (see generate.py).",
            features=dmis_features(),
            supervised_keys=("image", "mask"),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
        return {s: self._generate_examples(s, n) for s, n in sizes.items() if n > 0}

    def _generate_examples(self, split, num):
        cfg = self.builder_config
        for i in range(num):
            ex = generate_example(
                seed=cfg.seed, split=split, index=i, min_size=cfg.min_size, max_size=cfg.max_size
            )
            h, w = ex["mask"].shape
            yield (
                ex["image_id"],
                {
                    "image": encode_png(ex["image"]),
                    "mask": encode_png(ex["mask"][:, :, None]),
                    "modality": ex["modality"],
                    "anatomy": ex["anatomy"],
                    "image_id": ex["image_id"],
                    "height": np.int32(h),
                    "width": np.int32(w),
                },
            )
