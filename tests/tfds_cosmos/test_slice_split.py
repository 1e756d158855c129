"""Splits by contiguous slice ranges, and the per-structure selection of a folder build."""

import numpy as np
import pytest
from PIL import Image

import tfds_cosmos
from tfds_cosmos.core.scan import Pair, slice_split

THIRDS = {"train": 1, "val": 1, "test": 1}


def _pairs(ids):
    return [Pair(i, i.split("_")[0], i.split("_")[1], f"{i}.png", f"{i}_mask.png") for i in ids]


def test_each_volume_is_cut_into_consecutive_blocks():
    # Volume a: slices 1..6 listed shuffled; volume b: slices 10, 11, 12 (numbers sort as ints).
    ids = [f"CT_Kidney_a-{k}" for k in (4, 1, 6, 2, 5, 3)] + [
        f"CT_Kidney_b-{k}" for k in (12, 10, 11)
    ]
    out = slice_split(_pairs(ids), proportions=THIRDS)
    got = {s: sorted(p.image_id for p in v) for s, v in out.items()}
    assert got == {
        "train": ["CT_Kidney_a-1", "CT_Kidney_a-2", "CT_Kidney_b-10"],
        "val": ["CT_Kidney_a-3", "CT_Kidney_a-4", "CT_Kidney_b-11"],
        "test": ["CT_Kidney_a-5", "CT_Kidney_a-6", "CT_Kidney_b-12"],
    }


def test_train_and_test_slices_are_never_neighbours():
    rng = np.random.default_rng(0)
    ids = [f"MR_Liver_v{v}-{k:03d}" for v in range(3) for k in rng.permutation(40)[:25]]
    out = slice_split(_pairs(ids))
    num = {p.image_id: int(p.image_id.rsplit("-", 1)[1]) for v in out.values() for p in v}
    for v in range(3):
        train = [num[p.image_id] for p in out["train"] if f"v{v}-" in p.image_id]
        test = [num[p.image_id] for p in out["test"] if f"v{v}-" in p.image_id]
        assert max(train) < min(test)  # a contiguous block each, val in between
        assert any(f"v{v}-" in p.image_id for p in out["val"])


def test_an_id_without_a_slice_number_is_named():
    with pytest.raises(ValueError, match="'CT_Kidney_scan'"):
        slice_split(_pairs(["CT_Kidney_a-1", "CT_Kidney_scan"]))


def _folder(tmp_path):
    folder = tmp_path / "vol"
    folder.mkdir()
    for anatomy in ("Kidney", "Liver"):
        for k in range(6):
            stem = f"CT_{anatomy}_s-{k}"
            Image.fromarray(np.full((20, 24, 3), 40 * k, np.uint8)).save(folder / f"{stem}.png")
            mask = np.zeros((20, 24), np.uint8)
            mask[5:12, 6:14] = 255
            Image.fromarray(mask).save(folder / f"{stem}_mask.png")
    return folder


def test_build_one_structure_split_by_slices(tmp_path):
    builder = tfds_cosmos.build(
        _folder(tmp_path), data_dir=tmp_path / "tfds", anatomy="Kidney", split_by="slices"
    )
    assert builder.info.full_name == "dmis_folder/vol_kidney_slices/1.0.0"
    ids = {
        s: sorted(builder.as_data_source(split=s)[i]["image_id"].decode()
                  for i in range(builder.info.splits[s].num_examples))
        for s in builder.info.splits
    }  # fmt: skip
    # Paper proportions (57.4 / 10.7 / 32.0 %) of 6 slices: 3, 1, 2 (cumulative rounding).
    assert ids == {
        "train": ["CT_Kidney_s-0", "CT_Kidney_s-1", "CT_Kidney_s-2"],
        "val": ["CT_Kidney_s-3"],
        "test": ["CT_Kidney_s-4", "CT_Kidney_s-5"],
    }
    assert builder.read_report()["split_source"] == "slices"


def test_an_unknown_structure_is_named_with_those_found(tmp_path):
    with pytest.raises(Exception, match=r"anatomy='Spleen'.*\['Kidney', 'Liver'\]"):
        tfds_cosmos.build(_folder(tmp_path), data_dir=tmp_path / "tfds", anatomy="Spleen")
