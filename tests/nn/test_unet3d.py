"""UNet3D: parameter counts, shapes, IFE on volumes, a sharded train step and the Keras export."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import optax
import pytest
from _models import key, n_params

from ife_jax import curvature_scores
from ife_jax.nn import UNet3D, enhanced_channels
from ife_jax.train.sharding import make_mesh, shard_batch
from ife_jax.train.state import abstract_train_state, initialize, state_shardings
from ife_jax.train.step import jit_train_step, make_train_step

TINY = (2, 4, 8, 8)  # stride 8
SHAPE = (2, 16, 16, 16, 1)


def double_conv(cin, w):
    """Two 3x3x3 convs with bias and two BatchNorms (scale and bias)."""
    return 27 * cin * w + w + 2 * w + 27 * w * w + w + 2 * w


def test_default_parameter_count_is_the_arithmetic():
    widths = (32, 64, 128, 256, 320, 320)
    want = double_conv(1, widths[0])
    want += sum(double_conv(widths[i - 1], widths[i]) for i in range(1, len(widths)))
    below = widths[-1]
    for w in reversed(widths[:-1]):
        want += 8 * below * w + w  # 2x2x2 transposed conv with bias
        want += double_conv(2 * w, w)  # [skip, upsampled]
        below = w
    want += widths[0] + 1  # 1x1x1 head
    assert want == 31_194_017
    assert n_params(UNet3D(), (1, 32, 32, 32, 1)) == want


@pytest.mark.parametrize("ife", ["curvature", "entropy"])
@pytest.mark.parametrize("ratios", [(0.5, 0.5), (0.75, 0.25)])
def test_ife_widens_only_the_decoder_convs_fed_by_c2_and_c3(ife, ratios):
    base = n_params(UNet3D(), (1, 32, 32, 32, 1))
    extra3 = enhanced_channels(128, ratios[1]) - 128
    extra2 = enhanced_channels(64, ratios[0]) - 64
    got = n_params(UNet3D(ife=ife, ratios=ratios), (1, 32, 32, 32, 1))
    assert got - base == 27 * 128 * extra3 + 27 * 64 * extra2


def test_a_ratio_of_0_leaves_that_skip_without_ife():
    # Only c2 is enhanced: only the decoder conv fed by c2 widens, by 27 * 64 * 32 (half of
    # c2's 64 channels appended); c3 keeps no IFE module.
    base = n_params(UNet3D(), (1, 32, 32, 32, 1))
    model = UNet3D(ife="curvature", ratios=(0.5, 0.0))
    assert n_params(model, (1, 32, 32, 32, 1)) - base == 27 * 64 * 32


def test_output_shape_and_ife_selection():
    model = UNet3D(widths=TINY, ife="curvature", num_classes=2)
    x = jax.random.normal(key(1), (2, 16, 24, 16, 3))
    variables = jax.jit(model.init)(key(2), x)
    apply = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=True))
    y, state = apply(variables, x)
    assert y.shape == (2, 16, 24, 16, 2)
    inter = state["intermediates"]
    c3 = inter["down3"]["__call__"][0]  # (2, 4, 6, 4, 8)
    idx = np.asarray(inter["ife_c3"]["indices"][0])
    want = np.argsort(-np.asarray(curvature_scores(c3)), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(idx, want)
    enhanced = np.asarray(inter["ife_c3"]["__call__"][0])
    c3 = np.asarray(c3)
    selected = np.take_along_axis(c3, idx[:, None, None, None, :], axis=4)
    np.testing.assert_array_equal(enhanced, np.concatenate([c3, selected], -1))


@pytest.mark.parametrize(
    ("kwargs", "shape", "match"),
    [
        ({}, (1, 12, 16, 16, 1), "divisible by 8"),
        ({}, (1, 16, 16, 1), "NDHWC"),
        ({"widths": (2, 4, 8)}, (1, 16, 16, 16, 1), "at least 4"),
        ({"ife": "laplace"}, (1, 16, 16, 16, 1), "ife must be"),
    ],
)
def test_bad_arguments(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        n_params(UNet3D(**{"widths": TINY, **kwargs}), shape)


def sphere_batch():
    zz, yy, xx = np.mgrid[:16, :16, :16]
    mask = ((zz - 8) ** 2 + (yy - 7) ** 2 + (xx - 9) ** 2 < 25).astype(np.float32)
    rng = np.random.default_rng(0)
    mask = np.broadcast_to(mask[None, ..., None], SHAPE).copy()
    image = mask + 0.3 * rng.standard_normal(SHAPE).astype(np.float32)
    return {"image": image, "mask": mask}


def test_sharded_train_step_lowers_the_loss():
    model = UNet3D(widths=TINY, ife="entropy")
    tx = optax.adam(1e-2)
    mesh = make_mesh()
    abstract, init = abstract_train_state(model, tx, SHAPE)
    state = initialize(init, key(3), state_shardings(abstract, mesh))
    step = jit_train_step(make_train_step(model, tx, base_key=key(4)),
                          jax.tree.map(lambda a: a.sharding, state), mesh)  # fmt: skip
    batch = shard_batch(sphere_batch(), mesh)
    losses = []
    for _ in range(4):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert int(state.step) == 4


def test_exports_to_keras_and_reloads(tmp_path):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("from_flax needs the JAX backend")
    from ife_jax.keras import from_flax

    module = UNet3D(widths=TINY, ife="entropy", ratios=(0.5, 0.25))
    x = sphere_batch()["image"]
    variables = jax.jit(module.init)(key(5), x)
    model = from_flax(module, (16, 16, 16, 1), variables=variables)
    n = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert n == n_params(module, (1, 16, 16, 16, 1))
    want = np.asarray(jax.jit(module.apply)(variables, x))
    got = model.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    path = tmp_path / "unet3d.keras"
    model.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path).predict(x, verbose=0), got)
