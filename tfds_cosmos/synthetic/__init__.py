"""The synthetic DMIS builder and its generator."""

from tfds_cosmos.synthetic.generate import ANATOMIES, MODALITIES, generate_example
from tfds_cosmos.synthetic.synthetic_dataset_builder import (
    Synthetic,
    SyntheticConfig,
    synthetic_config,
)

__all__ = [
    "ANATOMIES",
    "MODALITIES",
    "Synthetic",
    "SyntheticConfig",
    "generate_example",
    "synthetic_config",
]
