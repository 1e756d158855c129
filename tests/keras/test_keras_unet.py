"""The Keras UNet: parameter counts, IFE insertion, a short fit with falling loss, save/reload."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from ife_jax.keras import Dice, IFELayer, StructureLoss, unet

TINY = (4, 8, 16, 32, 64)


@keras.saving.register_keras_serializable(package="ife_jax_tests")
class NumpyHeNormal(keras.initializers.Initializer):
    """He-normal (fan-out) kernels drawn with NumPy.

    On CPU, XLA compiles a new threefry program for every kernel shape Keras initialises on
    the JAX backend (seconds each); NumPy draws keep the tests quick.
    """

    def __init__(self, seed=0):
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __call__(self, shape, dtype=None):
        fan_out = shape[-1] * int(np.prod(shape[:-2]))
        values = self._rng.normal(scale=np.sqrt(2.0 / fan_out), size=shape)
        return values.astype(keras.backend.standardize_dtype(dtype or "float32"))

    def get_config(self):
        return {"seed": self.seed}


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_reference_parameter_count_and_ife_channel_arithmetic():
    # Lazy variables: shapes only, nothing is initialised.
    with keras.StatelessScope(initialize_variables=False):
        plain = unet()
        enhanced = unet(ife="entropy", ratios=(0.5, 0.5))
    assert trainable_count(plain) == 31_043_521
    assert plain.count_params() == 31_043_521 + 11_776  # + BatchNorm moving statistics
    # IFE widens the inputs of the first 3x3 conv of the decoder stages fed by c2 (128 ch,
    # + 64 channels) and c3 (256 ch, + 128 channels); nothing else changes.
    extra = 9 * 64 * 128 + 9 * 128 * 256
    assert trainable_count(enhanced) == 31_043_521 + extra
    # Decoder stage 2 consumes c3 (256 ch at 1/4), stage 3 consumes c2 (128 ch at 1/2).
    assert enhanced.get_layer("dec2_block0_conv").kernel.shape == (3, 3, 256 * 2 + 128, 256)
    assert enhanced.get_layer("dec3_block0_conv").kernel.shape == (3, 3, 128 * 2 + 64, 128)
    assert {type(l).__name__ for l in plain.layers}.isdisjoint({"IFELayer"})


def test_ratio_zero_leaves_that_skip_without_ife():
    with keras.StatelessScope(initialize_variables=False):
        model = unet(ife="entropy", ratios=(0.5, 0.0))
    # c2 gains int(0.5 * 128) = 64 channels (+ 9 * 64 * 128 weights in dec3's first conv); c3
    # keeps 256, so dec2 takes 2 * 256: the Flax UNet's count for the same ratios.
    assert trainable_count(model) == 31_043_521 + 9 * 64 * 128 == 31_117_249
    assert [l.name for l in model.layers if isinstance(l, IFELayer)] == ["ife_c2"]
    assert model.get_layer("dec2_block0_conv").kernel.shape == (3, 3, 256 * 2, 256)


def test_ife_sits_on_the_c2_and_c3_skips():
    with keras.StatelessScope(initialize_variables=False):
        model = unet((64, 48, 1), ife="curvature", ratios=(0.25, 0.75), widths=TINY)
    ife = sorted((l for l in model.layers if isinstance(l, IFELayer)), key=lambda l: l.name)
    assert [l.name for l in ife] == ["ife_c2", "ife_c3"]
    assert [l.ratio for l in ife] == [0.25, 0.75]
    assert model.get_layer("ife_c2").output.shape == (None, 32, 24, 8 + 2)
    assert model.get_layer("ife_c3").output.shape == (None, 16, 12, 16 + 12)
    assert model.output_shape == (None, 64, 48, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(ife="variance"), "ife"),
        (dict(ratios=(0.5,)), "ratios"),
        (dict(ratios=(0.5, -0.1)), "ratios"),
        (dict(ratios=(1.5, 0.5)), "ratios"),
        (dict(widths=(4, 8, 16)), "widths"),
        (dict(input_shape=(40, 32, 3)), "divisible by 16"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        unet(**kwargs)


def synthetic_set(n=8, size=32, seed=0):
    """Bright discs on noise: the mask is the disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(scale=0.3, size=(n, size, size, 3)).astype(np.float32)
    masks = np.zeros((n, size, size, 1), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(8, size - 8, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(16, 49)
        masks[i, disc, 0] = 1.0
        images[i, disc] += 1.0
    return images, masks


def test_fit_reduces_loss_then_save_and_reload(tmp_path):
    keras.utils.set_random_seed(0)
    images, masks = synthetic_set()
    model = unet((None, None, 3), ife="entropy", widths=TINY, kernel_initializer=NumpyHeNormal())
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=StructureLoss(), metrics=[Dice()])
    history = model.fit(images, masks, batch_size=4, epochs=4, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert 0.0 <= history.history["dice"][-1] <= 1.0

    before = model.predict(images[:2], verbose=0)
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images[:2], verbose=0), before)
    assert isinstance(loaded.get_layer("ife_c2"), IFELayer)
    assert isinstance(loaded.loss, StructureLoss)
