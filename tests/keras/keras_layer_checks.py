"""The checks every public Keras layer of the project must pass (one shared helper)."""

from __future__ import annotations

import keras
import numpy as np


def check_keras_layer(make_layer, input_shape, tmp_path, *, batch: int = 2, seed: int = 0):
    """Config round trip, symbolic and eager calls, ``.keras`` save/load, one ``fit`` step.

    Args:
      make_layer: zero-argument callable returning a fresh layer.
      input_shape: the per-sample input shape (no batch axis).
      tmp_path: a directory for the saved model.

    Returns:
      The eager output of the layer on the test batch (a NumPy array).
    """
    x = np.random.default_rng(seed).normal(size=(batch, *input_shape)).astype("float32")

    # Config round trip: from_config(get_config()) rebuilds an equal layer.
    layer = make_layer()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    # The config survives serialisation to JSON-able form and back through the registry.
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == config

    # Eager call and symbolic (functional) call of the same layer agree on shape and values;
    # a fresh layer gives the same symbolic shape.
    eager = keras.ops.convert_to_numpy(layer(x))
    assert eager.shape == (batch, *layer.compute_output_shape((batch, *input_shape))[1:])
    inputs = keras.Input(input_shape)
    outputs = layer(inputs)
    assert tuple(outputs.shape) == layer.compute_output_shape((None, *input_shape))
    assert tuple(make_layer()(inputs).shape) == tuple(outputs.shape)
    model = keras.Model(
        inputs, keras.layers.Dense(1, kernel_initializer="zeros", name="probe")(outputs)
    )
    features = keras.Model(inputs, outputs)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(features(x)), eager, rtol=1e-6)

    # .keras save and load: identical outputs.
    before = keras.ops.convert_to_numpy(model(x))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), before)

    # One fit step: finite loss and the trainable weights move.
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    probe = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    history = model.fit(x, np.ones(before.shape, "float32"), epochs=1, batch_size=batch, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(probe, after, strict=True))
    return eager
