"""The Cosmos55k builder (manual download; see ``MANUAL_DOWNLOAD_INSTRUCTIONS``)."""

from tfds_cosmos.cosmos55k.cosmos55k_dataset_builder import MANUAL_DOWNLOAD_INSTRUCTIONS, Cosmos55k

__all__ = ["MANUAL_DOWNLOAD_INSTRUCTIONS", "Cosmos55k"]
