"""Cosmos55k and DMIS-folder builders on the committed dummy_data (both layouts, all formats)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tfds_cosmos
from tfds_cosmos.cosmos55k import MANUAL_DOWNLOAD_INSTRUCTIONS
from tfds_cosmos.testing import REFERENCE_SPLITS, object_pair

DUMMY = os.path.join(os.path.dirname(tfds_cosmos.__file__), "cosmos55k", "dummy_data")
MIXED = os.path.join(os.path.dirname(tfds_cosmos.__file__), "dmis_folder", "dummy_data")


def _records(source):
    return [source[i] for i in range(len(source))]


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ref")
    return tfds_cosmos.build(
        "cosmos55k", manual_dir=os.path.join(DUMMY, "reference"), data_dir=data_dir
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tree")
    return tfds_cosmos.build("cosmos55k", manual_dir=os.path.join(DUMMY, "tree"), data_dir=data_dir)


def _expected_ids(entries):
    out = []
    for e in entries:
        if e.startswith("#"):
            continue
        stem = os.path.splitext(e)[0]
        out.append(stem[: -len("_mask")] if stem.endswith("_mask") else stem)
    return sorted(out)


def test_reference_layout_splits_follow_id_lists(reference):
    sources = reference.as_data_source()
    assert {s: len(v) for s, v in sources.items()} == {"train": 7, "val": 2, "test": 3}
    for split, entries in REFERENCE_SPLITS.items():
        ids = sorted(_text(r["image_id"]) for r in _records(sources[split]))
        assert ids == _expected_ids(entries)
    report = reference.read_report()
    assert report["layout"] == "reference" and report["split_source"] == "files"
    assert report["skipped"] == [] and report["num_examples"] == {"train": 7, "val": 2, "test": 3}


@pytest.mark.parametrize("layout", ["reference", "tree"])
def test_features_and_pairing_by_name(layout, reference, tree):
    builder = {"reference": reference, "tree": tree}[layout]
    for split, source in builder.as_data_source().items():
        for r in _records(source):
            image_id = _text(r["image_id"])
            want_image, want_mask = object_pair(image_id)
            assert r["image"].dtype == np.uint8 and r["image"].shape == want_image.shape + (3,)
            assert r["mask"].dtype == np.uint8 and r["mask"].shape == want_mask.shape + (1,)
            # Each stored image sits with its own mask (sizes and rectangles differ per id).
            np.testing.assert_array_equal(r["image"], np.repeat(want_image[:, :, None], 3, 2))
            np.testing.assert_array_equal(r["mask"][:, :, 0], want_mask)
            assert (int(r["height"]), int(r["width"])) == want_mask.shape
            modality, anatomy = image_id.split("_")[:2]
            assert (_text(r["modality"]), _text(r["anatomy"])) == (modality, anatomy), split


def test_tree_layout_hash_split_is_stratified_and_deterministic(tree, tmp_path):
    sources = tree.as_data_source()
    assert {s: len(v) for s, v in sources.items()} == {"train": 6, "val": 2, "test": 4}
    for split, n in {"train": 3, "val": 1, "test": 2}.items():
        groups = [_text(r["modality"]) for r in _records(sources[split])]
        assert groups.count("CT") == n and groups.count("MRI") == n
    ids = {s: sorted(_text(r["image_id"]) for r in _records(v)) for s, v in sources.items()}
    again = tfds_cosmos.load("cosmos55k", manual_dir=os.path.join(DUMMY, "tree"), data_dir=tmp_path)
    assert {s: sorted(_text(r["image_id"]) for r in _records(v)) for s, v in again.items()} == ids
    assert "CT_Liver_3" in sum(ids.values(), [])  # the mask named 3_mask.png was paired
    assert tree.read_report()["layout"] == "tree"


def test_manual_download_instructions_explain_both_layouts():
    text = MANUAL_DOWNLOAD_INSTRUCTIONS
    for needle in ("_mask.png", "images/", "masks/", "train.txt", "31,548", "skip_invalid"):
        assert needle in text
    assert tfds_cosmos.Cosmos55k.MANUAL_DOWNLOAD_INSTRUCTIONS == text


def test_folder_builder_has_own_name_version_and_converts_formats(tmp_path):
    builder = tfds_cosmos.build(MIXED, name="mixed_formats", version="2.1.0", data_dir=tmp_path)
    assert builder.name == "dmis_folder" and builder.builder_config.name == "mixed_formats"
    assert str(builder.version) == "2.1.0"
    assert builder.data_dir.endswith(os.path.join("dmis_folder", "mixed_formats", "2.1.0"))
    recs = {}
    for source in builder.as_data_source().values():
        recs.update({_text(r["image_id"]): r for r in _records(source)})
    assert len(recs) == 5
    for image_id, r in recs.items():
        _, want_mask = object_pair(image_id)
        assert r["image"].shape[2] == 3 and r["image"].dtype == np.uint8
        if image_id == "CT_Lung_1":  # anti-aliased: binarised at > 127, not at > 0
            soft = np.asarray(Image.open(os.path.join(MIXED, "CT_Lung_1_mask.png")))
            assert len(np.unique(soft)) > 2 and (soft > 0).sum() > (soft > 127).sum()
            np.testing.assert_array_equal(r["mask"][:, :, 0], soft > 127)
        else:
            np.testing.assert_array_equal(r["mask"][:, :, 0], want_mask, err_msg=image_id)
    grey = np.where(object_pair("XRay_Chest_1")[1] > 0, 220, 30)
    np.testing.assert_array_equal(recs["XRay_Chest_1"]["image"], np.stack([grey] * 3, 2))
    derm = np.where(object_pair("Derm_Skin_1")[1] > 0, 220, 30)  # RGBA: alpha dropped
    np.testing.assert_array_equal(recs["Derm_Skin_1"]["image"], np.stack([derm] * 3, 2))
    lung = recs["CT_Lung_1"]["image"]  # 16-bit 6000/44000 -> min-max -> 0/255
    assert set(np.unique(lung)) == {0, 255}
    assert set(np.unique(recs["US_Thyroid_1"]["image"])) == {30, 220}  # palette expanded
    knee = recs["MRI_Knee_1"]["image"]
    assert knee[..., 1].max() == 110 and knee[..., 2].max() == 73  # RGB kept
    report = json.load(open(builder.report_path))
    assert report["num_non_binary_masks"] == 1 and report["non_binary_masks"] == ["CT_Lung_1"]
    assert report["mask_rules"] == {"gt127": 3, "gt0": 2}
    assert report["image_modes"] == {"I;16": 1, "RGBA": 1, "L": 1, "P": 1, "RGB": 1}
    # Reading back by name needs no source folder.
    again = tfds_cosmos.load("dmis_folder/mixed_formats", version="2.1.0", data_dir=tmp_path)
    assert {s: len(v) for s, v in again.items()} == {"train": 3, "val": 1, "test": 1}


def test_build_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        tfds_cosmos.build("no_such_thing", data_dir=tmp_path)
    with pytest.raises(ValueError, match="dataset name"):
        tfds_cosmos.folder_config("Bad-Name")


def test_no_tensorflow_anywhere():
    code = (
        "import sys, tfds_cosmos, ife_jax.data\n"
        "src = tfds_cosmos.load('synthetic/tiny', split='val', data_dir=sys.argv[1])\n"
        "src[0]\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "try:\n    import tensorflow\nexcept ImportError:\n    print('no-tf')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [sys.executable, "-c", code, d], capture_output=True, text=True, env=env, timeout=120
        )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("no-tf")
