"""A builder (one config per collection) for any user DMIS folder."""

from tfds_cosmos.dmis_folder.dmis_folder_dataset_builder import DmisFolder, folder_config

__all__ = ["DmisFolder", "folder_config"]
