"""The shared TFDS builder for DMIS folders (image + binary mask pairs)."""

from __future__ import annotations

import collections
import inspect
import json
import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from tfds_cosmos.core import images as images_lib
from tfds_cosmos.core import scan as scan_lib

REPORT_NAME = "build_report.json"
_log = logging.getLogger(__name__)


def dmis_features() -> tfds.features.FeaturesDict:
    """The features of every DMIS dataset of this package.

    ``image`` uint8 (H, W, 3) PNG (grey replicated), ``mask`` uint8 (H, W, 1) PNG with values
    0/1, ``modality``, ``anatomy``, ``image_id`` text, ``height``/``width`` int32: the original
    size (the stored image is never resized).
    """
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "modality": tfds.features.Text(),
            "anatomy": tfds.features.Text(),
            "image_id": tfds.features.Text(),
            "height": np.int32,
            "width": np.int32,
        }
    )


class CodePathMixin:
    """Gives TFDS the builder's source file directly.

    TFDS's own lookup goes through the optional ``importlib_resources`` backport for builders in
    nested packages; the file of the class is all it needs (for ``checksums.tsv`` and
    ``dummy_data/``).
    """

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))


class DatasetBuildError(ValueError):
    """The input folder has problems; the message names every file involved."""


def _format_problems(problems, limit: int = 50) -> str:
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n  ".join(lines)


class DmisFolderBuilder(CodePathMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds a DMIS dataset from a folder of image/mask pairs (see ``tfds_cosmos.core.scan``).

    It takes TFDS's keyword arguments and those below.

    Args:
      layout: ``"auto"`` | ``"reference"`` | ``"tree"``.
      skip_invalid: if False (default) any problem raises :class:`DatasetBuildError` naming the
        files; if True the bad files are left out and listed in ``build_report.json``.
      source_dir: the folder to read; defaults to the download config's ``manual_dir``.
      anatomy: keep only the pairs of this anatomy (one binary task per structure when the
        same slice appears under several structures).
      split_by: without split files in the folder, ``"hash"`` (ids hashed, per modality and
        anatomy) or ``"slices"`` (contiguous slice ranges per volume, see
        :func:`tfds_cosmos.core.scan.slice_split`).

    ``file_format`` defaults to ``"array_record"`` (read with ``as_data_source``; TensorFlow is
    never needed). After a build, ``build_report.json`` in the dataset folder lists the split
    sizes, every skipped file and why, the mask binarisation rules used, the ids of non-binary
    masks and the count of converted image modes.
    """

    def __init__(
        self,
        *,
        layout: str = "auto",
        skip_invalid: bool = False,
        source_dir: str | os.PathLike | None = None,
        anatomy: str | None = None,
        split_by: str = "hash",
        **kwargs,
    ):
        if layout not in scan_lib.LAYOUTS:
            raise ValueError(f"layout must be one of {scan_lib.LAYOUTS}, got {layout!r}")
        if split_by not in scan_lib.SPLIT_METHODS:
            raise ValueError(f"split_by must be one of {scan_lib.SPLIT_METHODS}, got {split_by!r}")
        self._anatomy = anatomy
        self._split_by = split_by
        self._layout = layout
        self._skip_invalid = bool(skip_invalid)
        self._source_dir = None if source_dir is None else os.fspath(source_dir)
        self._report: dict | None = None
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    DESCRIPTION = "Image/mask pairs for dichotomous medical image segmentation."
    CITATION = ""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            citation=self.CITATION,
            features=dmis_features(),
            supervised_keys=("image", "mask"),
        )

    @property
    def report_path(self) -> str:
        return os.path.join(os.fspath(self.data_dir), REPORT_NAME)

    def _resolve_source(self, dl_manager) -> str:
        if self._source_dir is not None:
            return self._source_dir
        return os.fspath(dl_manager.manual_dir)

    def _split_generators(self, dl_manager):
        root = self._resolve_source(dl_manager)
        scan = scan_lib.scan_folder(root, layout=self._layout)
        pairs = scan.pairs
        if self._anatomy is not None:
            pairs = [p for p in pairs if p.anatomy == self._anatomy]
            if not pairs:
                found = sorted({p.anatomy for p in scan.pairs})
                raise DatasetBuildError(
                    f"anatomy={self._anatomy!r}: no pair of {root} has it; found {found}"
                )
        splits, split_problems, source = scan_lib.assign_splits(
            pairs, root, split_by=self._split_by
        )
        problems = scan.problems + split_problems
        if problems and not self._skip_invalid:
            raise DatasetBuildError(
                f"{len(problems)} problem(s) in {root} (pass skip_invalid=True to leave the "
                f"files out and list them in {REPORT_NAME}):\n  {_format_problems(problems)}"
            )
        empty = [s for s, members in splits.items() if not members]
        for s in empty:
            del splits[s]
        if not splits:
            raise DatasetBuildError(f"no valid image/mask pairs in {root}")
        self._report = {
            "dataset": self.name,
            "config": self.builder_config.name if self.builder_config else None,
            "version": str(self.version),
            "source": os.path.abspath(root),
            "layout": scan.layout,
            "split_source": source,
            "anatomy": self._anatomy,
            "skip_invalid": self._skip_invalid,
            "num_examples": {},
            "skipped": [p.as_dict() for p in problems],
            "mask_rules": collections.Counter(),
            "non_binary_masks": [],
            "empty_masks": [],
            "image_modes": collections.Counter(),
        }
        return {split: self._generate_examples(pairs, split) for split, pairs in splits.items()}

    def _generate_examples(self, pairs, split):
        report = self._report
        failures = []
        count = 0
        for pair in pairs:
            try:
                img_pil = images_lib.open_image(pair.image_path)
                mask_pil = images_lib.open_image(pair.mask_path)
                image = images_lib.to_rgb8(img_pil)
                mask, info = images_lib.to_binary_mask(mask_pil)
            except images_lib.UnreadableImageError as e:
                failures.append(
                    scan_lib.Problem(
                        "unreadable", (pair.image_path, pair.mask_path), f"pair dropped: {e}"
                    )
                )
                continue
            if image.shape[:2] != mask.shape:
                failures.append(
                    scan_lib.Problem(
                        "size_mismatch",
                        (pair.image_path, pair.mask_path),
                        f"decoded image is {image.shape[:2]} but mask is {mask.shape} (H, W)",
                    )
                )
                continue
            report["image_modes"][img_pil.mode] += 1
            report["mask_rules"][info.rule] += 1
            if info.non_binary:
                report["non_binary_masks"].append(pair.image_id)
            if not mask.any():
                report["empty_masks"].append(pair.image_id)
            count += 1
            yield (
                pair.image_id,
                {
                    "image": images_lib.encode_png(image),
                    "mask": images_lib.encode_png(mask[:, :, None]),
                    "modality": pair.modality,
                    "anatomy": pair.anatomy,
                    "image_id": pair.image_id,
                    "height": np.int32(image.shape[0]),
                    "width": np.int32(image.shape[1]),
                },
            )
        report["skipped"].extend(f.as_dict() for f in failures)
        if failures and not self._skip_invalid:
            raise DatasetBuildError(
                f"{len(failures)} unreadable or inconsistent pair(s) in split {split!r}:\n  "
                + _format_problems(failures)
            )
        if count == 0:
            raise DatasetBuildError(f"split {split!r} is empty: every pair in it was skipped")
        report["num_examples"][split] = count

    def download_and_prepare(self, *args, **kwargs):
        """TFDS's ``download_and_prepare``, then writes ``build_report.json`` (if it built)."""
        self._report = None
        super().download_and_prepare(*args, **kwargs)
        if self._report is not None:
            report = dict(self._report)
            report["mask_rules"] = dict(report["mask_rules"])
            report["image_modes"] = dict(report["image_modes"])
            report["num_non_binary_masks"] = len(report["non_binary_masks"])
            report["num_skipped"] = len(report["skipped"])
            with open(self.report_path, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
            if report["skipped"]:
                _log.warning(
                    "%s: %d problem(s) skipped, listed in %s",
                    self.name,
                    len(report["skipped"]),
                    self.report_path,
                )

    def read_report(self) -> dict:
        """The ``build_report.json`` written by the last build of this dataset."""
        with open(self.report_path, encoding="utf-8") as f:
            return json.load(f)
