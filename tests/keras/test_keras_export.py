"""Flax networks as Keras models: fit, BatchNorm statistics, save and reload."""

import json
import os
import zipfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from ife_jax.keras import FlaxModule, from_flax
from ife_jax.keras.export import module_from_config, module_to_config
from ife_jax.nn import DeepLabV3Plus, NNUNet, SINetV2, UNet
from ife_jax.nnunet.image_plans import NNUNetPlan

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX backend only")


def test_module_config_round_trip():
    plan = NNUNetPlan(
        patch_size=(32, 32), batch_size=2, features=(4, 8), strides=((1, 1), (2, 2)),
        ife_levels=(0,), ife_ratios=(0.5,), median_shape=(40, 36),
    )  # fmt: skip
    for module in (
        UNet(ife="entropy", ratios=(0.25, 0.75), widths=(4, 8, 16, 32, 64), dtype=jnp.bfloat16),
        DeepLabV3Plus(backbone="resnet101", output_stride=8, ife="curvature", bins=64),
        SINetV2(ife="entropy", ratios=(0.5, 0.25, 0.75), blocks=(1, 1, 1, 1), planes=8),
        NNUNet(plan=plan, ife="curvature"),
    ):
        spec = json.loads(json.dumps(module_to_config(module)))  # as stored in the file
        assert module_from_config(spec) == module
        assert spec["config"]["dtype"] in ({"__dtype__": "bfloat16"}, {"__dtype__": "float32"})


def _spec(config=None, class_name="ife_jax.nn.unet.UNet"):
    return {"class_name": class_name, "config": {"widths": [2, 2, 2, 2, 2], **(config or {})}}


@pytest.mark.parametrize(
    "class_name",
    [
        "os.system",
        "ife_jax.metrics.report.write_csv",  # a function of the package
        "ife_jax.nn.ife.IFE",  # a Flax module of the package, but not a network
        "ife_jax.nn.resnet.ResNet",
        "builtins.eval",
        ["ife_jax.nn.unet.UNet"],  # not even a string
    ],
)
def test_module_from_config_accepts_only_the_allow_listed_networks(class_name):
    with pytest.raises(ValueError, match="is not a network this package can load"):
        module_from_config(_spec(class_name=class_name))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("widths", "22222", r"widths: expected a list; got '22222'"),
        ("widths", [2, 2, 2, 2, "2"], r"widths\[4\]: expected int; got '2'"),
        ("num_classes", 1.5, r"num_classes: expected int; got 1.5"),
        ("num_classes", True, r"num_classes: expected int; got True"),
        ("ratios", [0.5], r"ratios: expected 2 entries; got 1"),
        ("ratios", [0.5, float("nan")], r"ratios\[1\]: expected a finite number"),
        ("ife", 3, r"ife: expected str or null; got 3"),
        ("dtype", {"__dtype__": "object"}, r"dtype: expected a dtype"),
        ("dtype", "float32", r"dtype: expected a dtype"),
        ("evil", 1, r"unknown field\(s\) evil for UNet"),
    ],
)
def test_module_from_config_type_checks_every_field(field, value, message):
    with pytest.raises(ValueError, match="model file: UNet: " + message):
        module_from_config(_spec({field: value}))


def test_module_from_config_checks_the_nested_plan():
    plan = {"patch_size": [32, 32], "batch_size": "2", "features": [4], "strides": [[1, 1]]}
    with pytest.raises(ValueError, match=r"NNUNet: plan.batch_size: expected int; got '2'"):
        module_from_config({"class_name": "ife_jax.nn.nnunet.NNUNet", "config": {"plan": plan}})


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "unet.keras"
    from_flax(UNet(widths=(2, 2, 2, 2, 2)), (16, 16, 3)).save(path)
    return path


def _edit_layer_config(src, dst, edit):
    """Copies the ``.keras`` file ``src`` to ``dst``, ``edit`` applied to FlaxModule's config."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                layers = config["config"]["layers"]
                (layer,) = [x for x in layers if x["class_name"] == "FlaxModule"]
                edit(layer["config"])
                data = json.dumps(config).encode()
            zout.writestr(item, data)


def test_loading_a_crafted_model_file_never_calls_a_name_from_it(saved_model, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    crafted = tmp_path / "crafted.keras"

    def edit(config):
        config["module"] = {
            "class_name": "ife_jax.metrics.report.write_csv",
            "config": {"records": [], "path": str(victim)},
        }

    _edit_layer_config(saved_model, crafted, edit)
    with pytest.raises(ValueError, match="'ife_jax.metrics.report.write_csv' is not a network"):
        keras.saving.load_model(crafted)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["module"]["config"].update(widths="abc"), "widths: expected a list"),
        (lambda c: c["module"].update(class_name="ife_jax.nn.ife.IFE"), "is not a network"),
        (lambda c: c.update(call_fn="os.system"), "may not set call_fn"),
    ],
)
def test_loading_a_model_file_with_a_bad_config_names_the_problem(
    saved_model, tmp_path, edit, message
):
    bad = tmp_path / "bad.keras"
    _edit_layer_config(saved_model, bad, edit)
    with pytest.raises(ValueError, match=message):
        keras.saving.load_model(bad)


def test_fit_save_reload_identical(tmp_path):
    keras.utils.set_random_seed(0)
    module = UNet(widths=(4, 8, 16, 32, 64), ife="curvature")
    model = from_flax(module, (32, 32, 3))
    layer = model.get_layer("flax_module")
    assert isinstance(layer, FlaxModule)
    n_params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    n_stats = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    v = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert n_params == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(v["params"]))
    assert n_stats == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(v["batch_stats"]))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    y = (rng.uniform(size=(4, 32, 32, 1)) > 0.5).astype(np.float32)
    before_w = [np.asarray(w.value) for w in model.trainable_weights]
    before_s = [np.asarray(w.value) for w in model.non_trainable_weights]
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))  # fmt: skip
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # fit changed the parameters and the BatchNorm running statistics
    assert any(not np.array_equal(a, np.asarray(b.value))
               for a, b in zip(before_w, model.trainable_weights, strict=True))  # fmt: skip
    assert any(not np.array_equal(a, np.asarray(b.value))
               for a, b in zip(before_s, model.non_trainable_weights, strict=True))  # fmt: skip

    pred = model.predict(x, verbose=0)
    assert pred.shape == (4, 32, 32, 1)
    path = tmp_path / "unet.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), pred)
