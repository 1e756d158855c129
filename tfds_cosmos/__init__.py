"""TFDS builders for dichotomous medical image segmentation (DMIS) data, TensorFlow-free.

Builders (importing this package registers them with TFDS):

* ``cosmos55k``: the Cosmos55k collection from a folder you assemble (manual download).
* ``dmis_folder``: any folder in the same layouts, with its own name and version
  (one builder config per collection).
* ``synthetic``: procedural DMIS-like images, deterministic from a seed.

Every dataset is written as ArrayRecord and read by random access through
``builder.as_data_source()`` / ``tfds.data_source``; records come back decoded as NumPy
(``image`` uint8 (H, W, 3), ``mask`` uint8 (H, W, 1) 0/1, ``modality``/``anatomy``/``image_id``
bytes, ``height``/``width`` int).

Quick start::

    import tfds_cosmos
    sources = tfds_cosmos.load("synthetic/small", data_dir="/tmp/tfds")   # {"train": ..., ...}
    builder = tfds_cosmos.build("/data/my_collection", name="my_ct", data_dir="/tmp/tfds")
"""

from __future__ import annotations

import contextlib
import os
import re

from ife_jax._extras import missing_extra

try:
    import etils.epath  # noqa: F401
    import tensorflow_datasets as tfds
except ModuleNotFoundError as err:
    raise missing_extra(err, "data") from None

from tfds_cosmos.core.builder import DatasetBuildError, DmisFolderBuilder, dmis_features
from tfds_cosmos.cosmos55k import Cosmos55k
from tfds_cosmos.dmis_folder import DmisFolder, folder_config
from tfds_cosmos.synthetic import Synthetic, SyntheticConfig, generate_example, synthetic_config

__all__ = [
    "Cosmos55k",
    "DatasetBuildError",
    "DmisFolder",
    "DmisFolderBuilder",
    "Synthetic",
    "SyntheticConfig",
    "build",
    "dmis_features",
    "folder_config",
    "generate_example",
    "load",
    "synthetic_config",
]


def _folder_name(path: str) -> str:
    base = re.sub(r"[^a-z0-9_]+", "_", os.path.basename(os.path.normpath(path)).lower()).strip("_")
    if not base or not base[0].isalpha():
        base = f"d_{base}" if base else "dmis"
    return base


def build(
    name_or_folder: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    name: str | None = None,
    version: str = "1.0.0",
    config: tfds.core.BuilderConfig | None = None,
    manual_dir: str | os.PathLike | None = None,
    layout: str = "auto",
    skip_invalid: bool = False,
    overwrite: bool = False,
    anatomy: str | None = None,
    split_by: str = "hash",
    progress: bool = True,
) -> tfds.core.DatasetBuilder:
    """Builds (or reuses) a dataset and returns its prepared TFDS builder.

    Args:
      name_or_folder: one of
        ``"synthetic"`` / ``"synthetic/<config>"`` (configs ``default``, ``small``, ``tiny``,
        or pass ``config=synthetic_config(...)``);
        ``"cosmos55k"`` (reads ``manual_dir``);
        ``"dmis_folder/<name>"`` (an already built collection);
        or a path to a folder of image/mask pairs, built as ``dmis_folder/<name>``.
      data_dir: where datasets are stored (TFDS default ``~/tensorflow_datasets``).
      name: the dataset name for a folder (default: the folder's name, sanitised).
      version: the dataset version for a folder or a ``dmis_folder/<name>``.
      config: an explicit builder config (``synthetic_config(...)``, ``folder_config(...)``).
      manual_dir: the Cosmos55k folder (``cosmos55k`` only).
      layout: ``"auto"``, ``"reference"`` or ``"tree"`` (folder builders).
      skip_invalid: leave bad files out and list them in ``build_report.json`` instead of
        raising :class:`DatasetBuildError` (folder builders).
      overwrite: rebuild even if the dataset already exists.
      anatomy: a folder only: keep the pairs of this anatomy; the default name gets
        ``_<anatomy>`` appended.
      split_by: a folder without split files: ``"hash"`` or ``"slices"`` (contiguous slice
        ranges per volume); the default name gets ``_slices`` appended for the latter.
      progress: show TFDS's progress bars while it writes the dataset (they are set back as
        they were afterwards).

    Returns:
      the builder, prepared; ``builder.as_data_source(split=...)`` gives random-access sources.

    Raises:
      DatasetBuildError: problems in the input folder (the message names the files).
      ValueError: an unknown name, or a path that is not a folder.
    """
    spec = os.fspath(name_or_folder)
    folder_kwargs = dict(layout=layout, skip_invalid=skip_invalid)
    download_config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.fspath(manual_dir),
        download_mode=(
            tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
            if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        ),
    )
    head, _, tail = spec.partition("/")
    if (anatomy is not None or split_by != "hash") and not os.path.isdir(spec):
        raise ValueError(f"anatomy and split_by apply to a folder of pairs, not to {spec!r}")
    if os.path.isdir(spec) and head not in ("synthetic", "cosmos55k", "dmis_folder"):
        if name is None:
            name = _folder_name(spec)
            if anatomy is not None:
                name += "_" + re.sub(r"[^a-z0-9_]+", "_", anatomy.lower())
            if split_by == "slices":
                name += "_slices"
        cfg = config or folder_config(name, version=version)
        builder = DmisFolder(
            config=cfg, source_dir=spec, data_dir=data_dir, anatomy=anatomy,
            split_by=split_by, **folder_kwargs,
        )  # fmt: skip
    elif head == "synthetic":
        builder = Synthetic(config=config or (tail or None), data_dir=data_dir)
    elif head == "cosmos55k" and not tail:
        builder = Cosmos55k(data_dir=data_dir, **folder_kwargs)
    elif head == "dmis_folder" and tail:
        cfg = config or folder_config(tail, version=version)
        builder = DmisFolder(config=cfg, data_dir=data_dir, **folder_kwargs)
    else:
        raise ValueError(
            f"unknown dataset {spec!r}: expected 'synthetic[/<config>]', 'cosmos55k', "
            "'dmis_folder/<name>' or an existing folder"
        )
    with _progress_bars(progress):
        builder.download_and_prepare(download_config=download_config)
    return builder


@contextlib.contextmanager
def _progress_bars(enable: bool):
    """TFDS's progress bars on or off inside the block, then back as they were."""
    from tensorflow_datasets.core.utils import tqdm_utils

    before = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(enable)
    try:
        yield
    finally:
        tfds.display_progress_bar(before)


def load(name_or_folder: str | os.PathLike, *, split: str | None = None, **build_kwargs):
    """``build(...)`` then ``as_data_source``: a dict ``{split: source}`` or one source.

    Each source supports ``len(source)`` and ``source[i]`` (a dict of NumPy values) and can be
    handed to ``ife_jax.data.make_train_loader`` (training) or, as
    ``ife_jax.train.datasets.SourceExamples``, to ``ife_jax.train.inference`` (evaluation).
    """
    return build(name_or_folder, **build_kwargs).as_data_source(split=split)
