"""The synthetic builder: deterministic from its seed, DMIS-like, one object per image."""

import glob
import os

import cv2
import numpy as np
import pytest
from PIL import Image

import tfds_cosmos
from tfds_cosmos.synthetic import MODALITIES, generate_example, synthetic_config
from tfds_cosmos.testing import SYNTHETIC_GOLDEN

GOLDEN = os.path.join(os.path.dirname(tfds_cosmos.__file__), "synthetic", "dummy_data")


def _by_id(source):
    out = {}
    for i in range(len(source)):
        r = source[i]
        out[r["image_id"].decode()] = r
    return out


def test_generator_matches_committed_golden_examples():
    assert len(glob.glob(os.path.join(GOLDEN, "*_mask.png"))) == len(SYNTHETIC_GOLDEN)
    for split, index in SYNTHETIC_GOLDEN:
        ex = generate_example(seed=0, split=split, index=index, min_size=32, max_size=64)
        image = np.asarray(Image.open(os.path.join(GOLDEN, f"{ex['image_id']}.png")))
        mask = np.asarray(Image.open(os.path.join(GOLDEN, f"{ex['image_id']}_mask.png")))
        np.testing.assert_array_equal(ex["mask"] * 255, mask)
        # Float rounding in OpenCV may differ across CPUs by a grey level.
        assert np.abs(ex["image"].astype(int) - image.astype(int)).max() <= 2


def test_generator_is_a_pure_function_of_its_arguments():
    a = generate_example(seed=3, split="val", index=7)
    b = generate_example(seed=3, split="val", index=7)
    c = generate_example(seed=4, split="val", index=7)
    for k in ("image", "mask"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["image"].shape != c["image"].shape or not np.array_equal(a["image"], c["image"])
    assert 128 <= min(a["mask"].shape) and max(a["mask"].shape) <= 384


def test_examples_have_one_object_with_contrast():
    seen = set()
    for i in range(30):
        ex = generate_example(seed=1, split="train", index=i, min_size=96, max_size=160)
        mask, image = ex["mask"], ex["image"].astype(np.float32).mean(axis=2)
        n, _ = cv2.connectedComponents(mask)
        assert n == 2, ex["image_id"]  # background + one object
        assert 0.005 < mask.mean() < 0.6
        inside, outside = image[mask > 0].mean(), image[mask == 0].mean()
        assert abs(inside - outside) > 3.0, ex["image_id"]
        seen.add(ex["modality"])
    assert seen == set(MODALITIES)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="split"):
        generate_example(seed=0, split="training", index=0)
    with pytest.raises(ValueError, match="min_size"):
        synthetic_config("x", min_size=64, max_size=32)


def test_builder_is_deterministic_and_configurable(tmp_path):
    cfg = synthetic_config("t", seed=5, num_train=6, num_val=2, num_test=0, min_size=24,
                           max_size=40)  # fmt: skip
    one = tfds_cosmos.load("synthetic", config=cfg, data_dir=tmp_path / "a")
    two = tfds_cosmos.load("synthetic", config=cfg, data_dir=tmp_path / "b")
    assert {s: len(v) for s, v in one.items()} == {"train": 6, "val": 2}
    a, b = _by_id(one["train"]), _by_id(two["train"])
    assert sorted(a) == sorted(b)
    for image_id, r in a.items():
        np.testing.assert_array_equal(r["image"], b[image_id]["image"])
        np.testing.assert_array_equal(r["mask"], b[image_id]["mask"])
        assert r["image"].shape[:2] == (r["height"], r["width"])
        assert 24 <= r["height"] <= 40 and set(np.unique(r["mask"])) <= {0, 1}
        split, index = "train", int(image_id[-6:])
        ex = generate_example(seed=5, split=split, index=index, min_size=24, max_size=40)
        np.testing.assert_array_equal(r["image"], ex["image"])


def test_build_without_progress_prints_no_bars_and_leaves_them_on(tmp_path, capfd):
    # TFDS writes its bars to stderr even when it is not a terminal.
    tfds_cosmos.build("synthetic/tiny", data_dir=tmp_path / "quiet", progress=False)
    assert "Generating" not in capfd.readouterr().err
    tfds_cosmos.build("synthetic/tiny", data_dir=tmp_path / "default")
    assert "Generating" in capfd.readouterr().err  # back on for the next build
