"""Shared pieces of the DMIS builders: image reading, folder scanning, the folder builder."""

from tfds_cosmos.core.builder import DatasetBuildError, DmisFolderBuilder, dmis_features
from tfds_cosmos.core.images import read_image, read_mask
from tfds_cosmos.core.scan import Pair, Problem, assign_splits, hash_split, scan_folder

__all__ = [
    "DatasetBuildError",
    "DmisFolderBuilder",
    "Pair",
    "Problem",
    "assign_splits",
    "dmis_features",
    "hash_split",
    "read_image",
    "read_mask",
    "scan_folder",
]
