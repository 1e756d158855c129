"""Cosmos55k: the 55,023-image DMIS collection of the IFE paper, rebuilt from local files."""

from __future__ import annotations

import tensorflow_datasets as tfds

from tfds_cosmos.core.builder import DmisFolderBuilder

_DESCRIPTION = """
Cosmos55k (Liu et al., MICCAI 2023): 55,023 images with binary masks, 7 modalities and 26
anatomies, assembled from 30 public segmentation datasets. It was never released as one archive:
this builder reads a folder that you assemble yourself (see the manual download instructions).
Features: `image` uint8 RGB PNG (grey replicated), `mask` uint8 0/1 PNG, `modality`, `anatomy`,
`image_id`, original `height` and `width`.
"""

_CITATION = """
@inproceedings{liu2023ife,
  title={Instructive Feature Enhancement for Dichotomous Medical Image Segmentation},
  author={Liu, Lian and Fan, Han and Wang, Chen and others},
  booktitle={MICCAI},
  year={2023}
}
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = """
Cosmos55k has never been published as a single download: assemble it yourself from the public
datasets listed in the paper's supplementary material (or use any collection of your own), then
point `manual_dir` (e.g. `tfds_cosmos.build("cosmos55k", manual_dir=...)` or
`--manual_dir` of `tfds build`) at the folder. Two layouts are accepted:

1. Reference layout (what the published code expects), at any folder depth:
     CT_Liver_0001.png        the image
     CT_Liver_0001_mask.png   its mask, beside it
   Modality and anatomy are the first two `_`-separated tokens of the file name.
2. Tree layout:
     CT/Liver/images/0001.png
     CT/Liver/masks/0001.png  (or 0001_mask.png)
   The image id becomes CT_Liver_0001.

Masks may be 0/255, 0/1 or anti-aliased grey (binarised at > 127, or > 0 for 0/1 masks); images
may be grey, RGB, RGBA, palette or 16-bit (all stored as 8-bit RGB). Optional `train.txt`,
`val.txt`, `test.txt` in the top folder list the image ids of each split (one per line); without
them the split is a deterministic hash of the id, stratified by (modality, anatomy), in the
paper's proportions 31,548 / 5,884 / 17,591. Pairs are matched by id, never by file order. Any
unpaired, duplicated, unreadable or mis-sized file stops the build with a message naming it,
unless `skip_invalid=True`, which leaves it out and lists it in `build_report.json`.
"""


class Cosmos55k(DmisFolderBuilder):
    """Cosmos55k from a user-assembled folder (manual download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: both layouts, id-list or hash splits."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    DESCRIPTION = _DESCRIPTION
    CITATION = _CITATION
