"""Flax networks as Keras models: fit, BatchNorm statistics, save and reload."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ife_jax.keras import FlaxModule, from_flax  # noqa: E402
from ife_jax.keras.export import module_from_config, module_to_config  # noqa: E402
from ife_jax.nn import DeepLabV3Plus, UNet  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX backend only")


def test_module_config_round_trip():
    for module in (
        UNet(ife="entropy", ratios=(0.25, 0.75), widths=(4, 8, 16, 32, 64), dtype=jnp.bfloat16),
        DeepLabV3Plus(backbone="resnet101", output_stride=8, ife="curvature", bins=64),
    ):
        spec = module_to_config(module)
        assert module_from_config(spec) == module
        assert spec["config"]["dtype"] in ({"__dtype__": "bfloat16"}, {"__dtype__": "float32"})
    with pytest.raises(ValueError, match="only modules of the ife_jax package"):
        module_from_config({"class_name": "os.system", "config": {}})


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
