"""``predict`` on image files: the same reading as the dataset builders, outputs that never
collide, and a threshold that must be a probability.

The trained model is replaced by a stand-in whose foreground probability is the image's red
channel / 255, so what the network would see is visible in the masks written.
"""

import shutil
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tfds_cosmos
from ife_jax.cli import main
from ife_jax.train import predict as predict_lib

MIXED = Path(tfds_cosmos.__file__).parent / "dmis_folder" / "dummy_data"


@pytest.fixture
def model_inputs(monkeypatch):
    """Replaces the run's model by ``prob = red / 255``; returns the list of images it saw."""
    seen = []

    def load_model(workdir, *, checkpoint):
        config = types.SimpleNamespace(eval_size=32, batch_size=2)
        return config, None, None, None, None

    def predict_images(eval_step, variables, images, **kwargs):
        seen.extend(images)
        return [image[..., 0].astype(np.float32) / 255.0 for image in images]

    monkeypatch.setattr(predict_lib, "load_model", load_model)
    monkeypatch.setattr(predict_lib, "make_eval_step", lambda model, mesh: None)
    monkeypatch.setattr(predict_lib, "predict_images", predict_images)
    return seen


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _records_by_id(builder):
    out = {}
    for source in builder.as_data_source().values():
        for i in range(len(source)):
            r = source[i]
            out[r["image_id"].decode() if isinstance(r["image_id"], bytes) else r["image_id"]] = r
    return out


def test_predict_reads_a_16_bit_png_as_the_dataset_builder_does(tmp_path, model_inputs):
    # A 16-bit CT-like image: a ramp from 20000 with a brighter object; every value > 255.
    folder = tmp_path / "collection"
    shutil.copytree(MIXED, folder)
    mask = np.asarray(Image.open(folder / "CT_Lung_1_mask.png")) > 127
    h, w = mask.shape
    yy, xx = np.mgrid[:h, :w]
    raw = (20000 + 150 * (yy + xx) + 12000 * mask).astype(np.uint16)
    _write(folder / "CT_Lung_1.png", raw)
    assert Image.open(folder / "CT_Lung_1.png").mode == "I;16"

    builder = tfds_cosmos.build(str(folder), name="sixteen_bit", data_dir=tmp_path / "tfds")
    stored = _records_by_id(builder)["CT_Lung_1"]["image"]

    out = tmp_path / "pred"
    written = predict_lib.predict("run", [folder / "CT_Lung_1.png"], out)
    assert written == [out / "CT_Lung_1_mask.png"]
    (seen,) = model_inputs
    np.testing.assert_array_equal(seen, stored)  # predict sees what training saw

    # The slow obvious rescale: min -> 0, max -> 255, rounded, replicated to RGB.
    lo, hi = float(raw.min()), float(raw.max())
    want = np.round((raw.astype(np.float64) - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    np.testing.assert_array_equal(seen, np.stack([want] * 3, axis=2))
    predicted = np.asarray(Image.open(written[0]))
    np.testing.assert_array_equal(predicted, np.where(want / 255.0 >= 0.5, 255, 0))
    assert (predicted == 255).mean() < 0.9  # clipping to 8 bits would make it ~100% white


def test_predict_refuses_two_images_with_the_same_output_name(tmp_path, model_inputs):
    grey = np.full((8, 8), 100, np.uint8)
    a, b = _write(tmp_path / "a" / "x.png", grey), _write(tmp_path / "b" / "x.png", grey)
    with pytest.raises(ValueError, match=f"{a} and {b} would both be written to .*x_mask.png"):
        predict_lib.predict("run", [a, b], tmp_path / "pred")
    jpg = _write(tmp_path / "a" / "X.jpg", np.stack([grey] * 3, 2))
    with pytest.raises(ValueError, match=f"{a} and {jpg} would both be written"):
        predict_lib.predict("run", [a, jpg], tmp_path / "pred")
    with pytest.raises(ValueError, match=f"{a} and {a} would both be written"):
        predict_lib.predict("run", [a, a], tmp_path / "pred")
    assert model_inputs == [] and not (tmp_path / "pred").exists()  # refused before any work


def test_predict_never_replaces_an_input_image(tmp_path, model_inputs):
    grey = np.full((8, 8), 100, np.uint8)
    x, x_mask = _write(tmp_path / "x.png", grey), _write(tmp_path / "x_mask.png", grey)
    with pytest.raises(ValueError, match=f"would replace the input image {x_mask}"):
        predict_lib.predict("run", [x, x_mask], tmp_path)


def test_predict_cli_names_both_colliding_inputs_in_one_line(tmp_path, model_inputs, capsys):
    grey = np.full((8, 8), 100, np.uint8)
    a, b = _write(tmp_path / "a" / "x.png", grey), _write(tmp_path / "b" / "x.png", grey)
    argv = ["predict", "--workdir", "run", "--output", str(tmp_path / "pred"), str(a), str(b)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(a) in err and str(b) in err


def test_predict_writes_one_mask_per_image_for_distinct_names(tmp_path, model_inputs):
    grey = np.full((8, 8), 200, np.uint8)
    images = [_write(tmp_path / "a" / "x.png", grey), _write(tmp_path / "b" / "y.png", grey)]
    written = predict_lib.predict("run", images, tmp_path / "pred")
    assert [p.name for p in written] == ["x_mask.png", "y_mask.png"]
    assert all(p.exists() for p in written)


@pytest.mark.parametrize("threshold", ["nan", "-1", "0", "1", "1.5", "inf"])
def test_predict_threshold_outside_0_1_is_an_error_naming_it(
    threshold, tmp_path, model_inputs, capsys
):
    image = _write(tmp_path / "x.png", np.full((8, 8), 200, np.uint8))
    argv = ["predict", "--workdir", "run", "--output", str(tmp_path / "pred")]
    assert main([*argv, "--threshold", threshold, str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "threshold" in err
    assert repr(float(threshold)) in err
    assert model_inputs == [] and not (tmp_path / "pred").exists()
