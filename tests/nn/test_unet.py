"""UNet: parameter counts, shapes, IFE insertion, training step and mixed precision."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _models import adam_step, key, n_params, random_variables

import ife_jax.nn.ife
from ife_jax import curvature_scores
from ife_jax.losses import structure_loss
from ife_jax.nn import IFE, UNet, enhanced_channels

TINY = (4, 8, 16, 32, 64)


def test_reference_parameter_count():
    assert n_params(UNet(), (1, 64, 64, 3)) == 31_043_521


@pytest.mark.parametrize("ife", ["curvature", "entropy"])
@pytest.mark.parametrize("ratios", [(0.5, 0.5), (0.75, 0.25)])
def test_ife_parameter_difference_is_the_channel_arithmetic(ife, ratios):
    base = n_params(UNet(), (1, 64, 64, 3))
    # Only the first 3x3 conv of the decoder blocks fed by c3 (256 ch) and c2 (128 ch) widen.
    extra3 = enhanced_channels(256, ratios[1]) - 256
    extra2 = enhanced_channels(128, ratios[0]) - 128
    expected = 9 * 256 * extra3 + 9 * 128 * extra2
    assert n_params(UNet(ife=ife, ratios=ratios), (1, 64, 64, 3)) - base == expected
    if ratios == (0.5, 0.5):
        assert expected == 9 * 256 * 128 + 9 * 128 * 64  # 256*(2+r1) and 128*(2+r0) inputs


@pytest.mark.parametrize(("size", "channels"), [(224, 3), (288, 1), (352, 3)])
def test_output_shapes_default_widths(size, channels):
    model = UNet(ife="entropy")
    x = jax.ShapeDtypeStruct((2, size, size + 32, channels), jnp.float32)
    y, v = jax.eval_shape(model.init_with_output, key(), x)
    assert y.shape == (2, size, size + 32, 1)
    kernel = v["params"]["dec3"]["block0"]["conv"]["kernel"]
    assert kernel.shape == (3, 3, 128 * 2 + 64, 128)  # 128 * (2 + 0.5)
    assert v["params"]["down1"]["block0"]["conv"]["kernel"].shape[2] == channels


@pytest.mark.parametrize(
    ("kwargs", "shape", "match"),
    [
        ({}, (1, 100, 96, 3), "divisible by 16"),
        ({}, (96, 96, 3), "NHWC"),
        ({"ife": "laplace"}, (1, 64, 64, 3), "ife must be"),
        ({"ife": "entropy", "ratios": (0.5,)}, (1, 64, 64, 3), "ratios"),
        ({"ife": "entropy", "ratios": (0.5, 1.5)}, (1, 64, 64, 3), "ratio"),
        ({"bn_momentum": 1.0}, (1, 64, 64, 3), r"bn_momentum must be in \[0, 1\); got 1.0"),
        ({"bn_momentum": "0.9"}, (1, 64, 64, 3), "bn_momentum must be a number"),
    ],
)
def test_bad_arguments(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        n_params(UNet(widths=TINY, **kwargs), shape)


def test_no_ife_code_runs_without_ife(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("IFE called")

    monkeypatch.setattr(ife_jax.nn.ife, "enhance", boom)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    _, v = jax.eval_shape(UNet(widths=TINY).init_with_output, key(), x)
    assert not any("ife" in k for k in v["params"])
    with pytest.raises(AssertionError, match="IFE called"):
        jax.eval_shape(UNet(widths=TINY, ife="curvature").init, key(), x)


def test_selection_is_used_and_ignores_unselected_channels():
    model = UNet(widths=TINY, ife="curvature", ratios=(0.5, 0.5))
    x = jax.random.normal(key(1), (2, 32, 32, 3))
    variables = random_variables(model, x.shape)
    apply = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=True))
    _, state = apply(variables, x)
    inter = state["intermediates"]
    c2 = inter["down2"]["__call__"][0]  # (2, 16, 16, 8)
    enhanced = inter["ife_c2"]["__call__"][0]
    idx = np.asarray(inter["ife_c2"]["indices"][0])
    # Oracle: the k = int(0.5 * 8) = 4 channels of highest curvature, best first.
    scores = np.asarray(curvature_scores(c2))
    np.testing.assert_array_equal(idx, np.argsort(-scores, axis=1, kind="stable")[:, :4])
    c2 = np.asarray(c2)
    expected = np.concatenate([c2, np.take_along_axis(c2, idx[:, None, None, :], 3)], -1)
    np.testing.assert_array_equal(np.asarray(enhanced), expected)
    # Flattening unselected channels (curvature 0) leaves the appended part unchanged.
    perturbed = c2.copy()
    for b in range(2):
        unselected = np.setdiff1d(np.arange(8), idx[b])
        perturbed[b, :, :, unselected] = 3.0
    again = jax.jit(IFE(criterion="curvature", ratio=0.5).apply)({}, perturbed)
    np.testing.assert_array_equal(np.asarray(again)[..., 8:], expected[..., 8:])
    assert not np.array_equal(np.asarray(again)[..., :8], expected[..., :8])


def test_train_step_bfloat16_decreases_loss_and_keeps_float32_params():
    model = UNet(widths=TINY, ife="entropy", dtype=jnp.bfloat16)
    x = jax.random.normal(key(1), (2, 32, 32, 3))
    yy, xx = np.mgrid[:32, :32]
    masks = jnp.asarray(((yy - 16) ** 2 + (xx - 14) ** 2 < 64).astype(np.float32))
    masks = jnp.broadcast_to(masks[None, :, :, None], (2, 32, 32, 1))
    variables = random_variables(model, x.shape)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    tx = optax.adam(1e-2)
    params, stats = variables["params"], variables["batch_stats"]
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt):
        def loss_fn(p):
            logits, upd = model.apply(
                {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
            )
            return structure_loss(logits, masks), (upd["batch_stats"], logits.dtype)

        (loss, (stats, dtype)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss, grads

    losses = []
    for _ in range(4):
        params, new_stats, opt, loss, grads = step(params, stats, opt)
        assert not jax.tree.all(jax.tree.map(jnp.array_equal, new_stats, stats))
        stats = new_stats
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves((params, stats, grads)))
    assert model.apply({"params": params, "batch_stats": stats}, x).dtype == jnp.bfloat16


# IFE on c2 only: c2 (128 ch) gains int(0.5 * 128) = 64 channels, so the first 3x3 conv of the
# decoder block fed by c2 takes 128 * 2 + 64 = 320 inputs instead of 256 (+ 9 * 64 * 128
# weights); c3's block keeps 256 * 2 = 512.
def test_ratio_zero_switches_ife_off_at_that_skip():
    assert n_params(UNet(ife="entropy", ratios=(0.5, 0.0)), (1, 64, 64, 3)) == 31_117_249
    assert 31_117_249 == 31_043_521 + 9 * 64 * 128
    assert n_params(UNet(ife="curvature", ratios=(0.0, 0.0)), (1, 64, 64, 3)) == 31_043_521


def test_c2_only_ife_trains_one_step():
    model = UNet(widths=TINY, ife="entropy", ratios=(0.5, 0.0))
    x = jax.random.normal(key(1), (2, 32, 32, 3))
    yy, xx = np.mgrid[:32, :32]
    mask = ((yy - 16) ** 2 + (xx - 14) ** 2 < 64).astype(np.float32)
    masks = jnp.asarray(np.broadcast_to(mask[None, :, :, None], (2, 32, 32, 1)))
    variables = random_variables(model, x.shape)
    step, opt = adam_step(model, variables, x, masks)
    new, opt, loss0, inter = step(variables["params"], opt)
    assert "ife_c2" in inter and "ife_c3" not in inter
    assert inter["ife_c2"]["__call__"][0].shape == (2, 16, 16, 8 + 4)
    assert new["dec3"]["block0"]["conv"]["kernel"].shape == (3, 3, 8 * 2 + 4, 8)
    assert new["dec2"]["block0"]["conv"]["kernel"].shape == (3, 3, 16 * 2, 16)
    _, _, loss1, _ = step(new, opt)
    assert float(loss1) < float(loss0)


def test_bn_momentum_reaches_every_batchnorm():
    """Train mode normalises with the batch's statistics whatever the decay, so every layer sees
    the same inputs under both decays and each running average is ``m * start + (1 - m) *
    batch``: recover the batch statistics from the default decay (0.9) and predict 0.75's."""
    x = jax.random.normal(key(3), (2, 32, 32, 3))
    default, slow = UNet(widths=TINY, ife="curvature"), UNet(widths=TINY, ife="curvature",
                                                            bn_momentum=0.75)  # fmt: skip
    variables = default.init(key(), x)
    out = {}
    for name, model in (("default", default), ("slow", slow)):
        _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        out[name] = updates["batch_stats"]
    start = variables["batch_stats"]
    flat = jax.tree_util.tree_leaves_with_path
    layers = 0
    for (path, a), (_, b), (_, s0) in zip(flat(out["default"]), flat(out["slow"]), flat(start),
                                          strict=True):  # fmt: skip
        batch = (np.asarray(a, np.float64) - 0.9 * np.asarray(s0)) / 0.1
        np.testing.assert_allclose(b, 0.75 * s0 + 0.25 * batch, rtol=1e-5, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))  # fmt: skip
        assert not np.allclose(a, b), jax.tree_util.keystr(path)  # the decay changed it
        layers += 1
    assert layers == 2 * 2 * 9  # mean and var of 2 BatchNorms in each of 9 double convs
