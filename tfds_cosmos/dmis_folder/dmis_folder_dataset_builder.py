"""Any user DMIS folder as a named, versioned TFDS dataset (one builder config per collection)."""

from __future__ import annotations

import re

import tensorflow_datasets as tfds

from tfds_cosmos.core.builder import DmisFolderBuilder
from tfds_cosmos.cosmos55k.cosmos55k_dataset_builder import MANUAL_DOWNLOAD_INSTRUCTIONS

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def folder_config(
    name: str, *, version: str = "1.0.0", description: str = ""
) -> tfds.core.BuilderConfig:
    """A builder config naming one collection: ``DmisFolder(config=folder_config("my_ct"))``.

    Args:
      name: lower-case identifier (``[a-z][a-z0-9_]*``); the dataset is stored under
        ``<data_dir>/dmis_folder/<name>/<version>``.
      version: ``"MAJOR.MINOR.PATCH"``; bump it when the folder's content changes.
      description: free text kept in the dataset info.

    Raises:
      ValueError: a name or version TFDS cannot use.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"dataset name must match [a-z][a-z0-9_]*, got {name!r}")
    try:
        tfds.core.Version(version)
    except ValueError as e:
        raise ValueError(f"version must look like '1.0.0', got {version!r}") from e
    return tfds.core.BuilderConfig(name=name, version=version, description=description)


class DmisFolder(DmisFolderBuilder):
    """A DMIS collection of your own, in either Cosmos55k layout, with its own name and version.

    Example::

      builder = DmisFolder(config=folder_config("my_ct", version="1.1.0"),
                           source_dir="/data/my_ct", data_dir="/data/tfds")
      builder.download_and_prepare()
      train = builder.as_data_source(split="train")
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def __init__(self, *, config: tfds.core.BuilderConfig | str | None = None, **kwargs):
        if config is None:
            raise ValueError(
                "DmisFolder needs config=folder_config(name, version=...) naming the collection"
            )
        super().__init__(config=config, **kwargs)
