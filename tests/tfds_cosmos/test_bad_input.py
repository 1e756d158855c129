"""Every bad-input case: an error naming the files, or skip_invalid=True and a full report."""

import os

import numpy as np
import pytest

import tfds_cosmos
from tfds_cosmos import DatasetBuildError
from tfds_cosmos.core.scan import hash_split, scan_folder
from tfds_cosmos.testing import object_pair, save, write_lines, write_reference_pair

SPLITS = {
    "train": ["CT_Liver_1", "CT_Liver_2"],
    "val": ["CT_Liver_3", "CT_Liver_4"],
    "test": ["CT_Liver_5", "CT_Liver_6"],
}


def _good_folder(root):
    for ids in SPLITS.values():
        for image_id in ids:
            write_reference_pair(str(root), image_id)
    for split, ids in SPLITS.items():
        write_lines(os.path.join(root, f"{split}.txt"), ids)
    return str(root)


def _build(root, data_dir, **kw):
    return tfds_cosmos.build(str(root), name="bad", data_dir=str(data_dir), **kw)


def _truncated_png(path, image_id):
    image, _ = object_pair(image_id, size=(40, 40))
    rng = np.random.default_rng(0)
    noisy = (image + rng.integers(0, 20, image.shape)).astype(np.uint8)  # incompressible-ish
    save(path, noisy)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _mismatch(root):
    image, _ = object_pair("CT_Liver_7", size=(20, 20))
    _, mask = object_pair("CT_Liver_7", size=(21, 20))
    return (
        save(os.path.join(root, "CT_Liver_7.png"), image),
        save(os.path.join(root, "CT_Liver_7_mask.png"), mask * 255),
    )


def _unreadable(root):
    img = os.path.join(root, "CT_Liver_7.png")
    with open(img, "wb") as f:
        f.write(b"this is not a png")
    _, mask = object_pair("CT_Liver_7")
    return img, save(os.path.join(root, "CT_Liver_7_mask.png"), mask * 255)


def _truncated(root):
    img = os.path.join(root, "CT_Liver_7.png")
    _truncated_png(img, "CT_Liver_7")
    _, mask = object_pair("CT_Liver_7", size=(40, 40))
    # Listed, so that the pair (whose header is fine) is decoded.
    write_lines(os.path.join(root, "train.txt"), SPLITS["train"] + ["CT_Liver_7"])
    return img, save(os.path.join(root, "CT_Liver_7_mask.png"), mask * 255)


# Each case adds bad files to a good folder and returns (kind, files that must be named).
CASES = {
    "image_without_mask": lambda r: (
        "image_without_mask",
        [save(os.path.join(r, "CT_Liver_7.png"), object_pair("CT_Liver_7")[0])],
    ),
    "mask_without_image": lambda r: (
        "mask_without_image",
        [save(os.path.join(r, "sub", "CT_Liver_8_mask.png"), object_pair("CT_Liver_8")[1])],
    ),
    "duplicate_id": lambda r: (
        "duplicate_id",
        list(write_reference_pair(r, "CT_Liver_1", "copy")) + [os.path.join(r, "CT_Liver_1.png")],
    ),
    "unreadable": lambda r: ("unreadable", [_unreadable(r)[0]]),
    "truncated": lambda r: ("unreadable", [_truncated(r)[0]]),
    "size_mismatch": lambda r: ("size_mismatch", list(_mismatch(r))),
    "bad_name": lambda r: (
        "bad_name",
        [save(os.path.join(r, "Liver.png"), object_pair("x")[0])],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_raises_naming_it(case, tmp_path):
    root = _good_folder(tmp_path / "src")
    kind, files = CASES[case](root)
    with pytest.raises(DatasetBuildError) as err:
        _build(root, tmp_path / "out")
    msg = str(err.value)
    assert kind in msg, msg
    for f in files:
        assert f in msg, (f, msg)


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_invalid_continues_and_reports(case, tmp_path):
    root = _good_folder(tmp_path / "src")
    kind, files = CASES[case](root)
    builder = _build(root, tmp_path / "out", skip_invalid=True)
    report = builder.read_report()
    reported = [p for p in report["skipped"] if p["kind"] == kind]
    assert reported, report["skipped"]
    named = {f for p in report["skipped"] for f in p["files"]}
    assert set(files) <= named
    sizes = {s: len(v) for s, v in builder.as_data_source().items()}
    expected = {"train": 2, "val": 2, "test": 2}
    if case == "duplicate_id":  # both copies of CT_Liver_1 are dropped
        expected["train"] = 1
        assert any(p["kind"] == "listed_id_missing" for p in report["skipped"])
    assert sizes == expected
    assert report["num_skipped"] == len(report["skipped"])


def test_truncated_pair_is_skipped_during_generation(tmp_path):
    root = _good_folder(tmp_path / "src")
    img, mask = _truncated(root)
    with pytest.raises(DatasetBuildError, match="CT_Liver_7.png"):
        _build(root, tmp_path / "out")
    builder = _build(root, tmp_path / "out2", skip_invalid=True)
    report = builder.read_report()
    assert [p["kind"] for p in report["skipped"]] == ["unreadable"]
    assert report["skipped"][0]["files"] == [img, mask]
    assert len(builder.as_data_source("train")) == 2


def test_empty_split_raises_naming_the_list(tmp_path):
    root = _good_folder(tmp_path / "src")
    val = write_lines(os.path.join(root, "val.txt"), [])
    write_lines(os.path.join(root, "train.txt"), sum(SPLITS.values(), [])[:4])
    with pytest.raises(DatasetBuildError, match="empty_split") as err:
        _build(root, tmp_path / "out")
    assert val in str(err.value)
    builder = _build(root, tmp_path / "out2", skip_invalid=True)
    assert set(builder.as_data_source()) == {"train", "test"}
    assert [p["files"] for p in builder.read_report()["skipped"]] == [[val]]


def test_id_in_two_split_files_and_missing_ids(tmp_path):
    root = _good_folder(tmp_path / "src")
    train = write_lines(os.path.join(root, "train.txt"), ["CT_Liver_1", "CT_Liver_2", "CT_Liver_9"])
    val = write_lines(os.path.join(root, "val.txt"), ["CT_Liver_3", "CT_Liver_4", "CT_Liver_1"])
    with pytest.raises(DatasetBuildError) as err:
        _build(root, tmp_path / "out")
    msg = str(err.value)
    assert "id_in_several_splits" in msg and train in msg and val in msg
    assert "listed_id_missing" in msg and "CT_Liver_9" in msg


def test_no_pairs_at_all(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DatasetBuildError):
        _build(tmp_path / "src", tmp_path / "out", skip_invalid=True)


def test_pairs_never_follow_listing_order(tmp_path):
    # Sorting images and masks separately would pair CT_Liver_1 with CT_Liver_10's mask here.
    root = str(tmp_path)
    write_reference_pair(root, "CT_Liver_10")
    save(os.path.join(root, "CT_Liver_1.png"), object_pair("CT_Liver_1")[0])
    write_reference_pair(root, "CT_Liver_2")
    save(os.path.join(root, "CT_Liver_3_mask.png"), object_pair("CT_Liver_3")[1])
    scan = scan_folder(root)
    assert [(p.image_id, os.path.basename(p.mask_path)) for p in scan.pairs] == [
        ("CT_Liver_10", "CT_Liver_10_mask.png"),
        ("CT_Liver_2", "CT_Liver_2_mask.png"),
    ]
    assert sorted(p.kind for p in scan.problems) == ["image_without_mask", "mask_without_image"]


def test_hash_split_proportions_and_stability(tmp_path):
    from tfds_cosmos.core.scan import Pair

    pairs = [Pair(f"CT_Liver_{i}", "CT", "Liver", "", "") for i in range(1000)]
    pairs += [Pair(f"US_Breast_{i}", "US", "Breast", "", "") for i in range(200)]
    split = hash_split(pairs)
    for group, n in (("CT", 1000), ("US", 200)):
        counts = {s: sum(p.modality == group for p in v) for s, v in split.items()}
        assert sum(counts.values()) == n
        assert abs(counts["train"] / n - 31548 / 55023) < 0.003
        assert abs(counts["val"] / n - 5884 / 55023) < 0.003
    assert hash_split(list(reversed(pairs))) == split
