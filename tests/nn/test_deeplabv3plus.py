"""DeepLabV3+: parameter counts, shapes, IFE insertion (selected first), train/eval modes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import abstract_variables, adam_step, count, key
from _models import random_variables as _random_variables

from ife_jax import curvature_scores
from ife_jax.nn import DeepLabV3Plus, ResNet, enhanced_channels

TINY = dict(base_width=4, aspp_features=8, low_level_features=8, decoder_features=8)


def n_params(model, shape=(1, 64, 64, 3)):
    return count(abstract_variables(model, shape)["params"])


def random_variables(model, shape):
    """Random normalisation statistics and biases, so that train and eval modes differ."""

    def other(name, leaf, rng):
        if name in ("mean", "bias"):
            return jnp.asarray(rng.normal(0, 0.1, leaf.shape), leaf.dtype)
        return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)

    return _random_variables(model, shape, other)


def test_backbones_match_torchvision_counts():
    # torchvision resnet50 / resnet101 have 25,557,032 / 44,549,160 parameters, of which the
    # classifier fc holds 2048 * 1000 + 1000 = 2,049,000.
    assert n_params(ResNet("resnet50")) == 25_557_032 - 2_049_000
    assert n_params(ResNet("resnet101")) == 44_549_160 - 2_049_000


# ASPP: 1x1 + three 3x3 from 2048 to 256, pooling 1x1, projection 1280 -> 256, each + BN.
ASPP_PARAMS = 2048 * 256 + 3 * 9 * 2048 * 256 + 2048 * 256 + 1280 * 256 + 5 * 2 * 256 + 2 * 256
# low-level 1x1 256 -> 48 + BN; decoder 3x3 304 -> 256, 3x3 256 -> 256, each + BN; head 1x1.
DECODER_PARAMS = 256 * 48 + 2 * 48 + 9 * 304 * 256 + 9 * 256 * 256 + 4 * 256 + 256 + 1


@pytest.mark.parametrize(
    ("backbone", "ife", "expected"),
    [
        ("resnet50", None, 40_347_041),
        ("resnet50", "entropy", 40_872_353),
        ("resnet101", None, 59_339_169),
        ("resnet101", "curvature", 59_864_481),
    ],
)
def test_parameter_counts(backbone, ife, expected):
    count = n_params(DeepLabV3Plus(backbone=backbone, ife=ife))
    assert count == expected
    resnet = n_params(ResNet(backbone))
    # IFE widens only the first decoder conv: 48 (1 + r0) + 256 (1 + r1) inputs, not 304.
    extra = 0 if ife is None else enhanced_channels(48, 0.75) + enhanced_channels(256, 0.75) - 304
    assert extra in (0, 36 + 192)
    assert count == resnet + ASPP_PARAMS + DECODER_PARAMS + 9 * 256 * extra


def test_output_stride_and_dilation_layout_do_not_change_the_count():
    for output_stride in (16, 8):
        for multi_grid in ((1, 2, 4), None):
            model = DeepLabV3Plus(output_stride=output_stride, multi_grid=multi_grid)
            assert n_params(model) == 40_347_041


def conv2_dilations(model, shape=(1, 64, 64, 3)):
    """{block name: dilation of its 3x3 conv} as the traced network applies it."""
    seen = {}

    def record(call, args, kwargs, context):
        m = context.module
        if isinstance(m, nn.Conv) and m.name == "conv2" and context.method_name == "__call__":
            assert m.kernel_dilation[0] == m.kernel_dilation[1]
            seen[m.path[-2]] = m.kernel_dilation[0]
        return call(*args, **kwargs)

    with nn.intercept_methods(record):
        abstract_variables(model, shape)
    return seen


def blocks(rates_per_stage):
    return {
        f"layer{s + 1}_{b}": rate
        for s, rates in enumerate(rates_per_stage)
        for b, rate in enumerate(rates)
    }


# ResNet-50 has 3, 4, 6 and 3 bottlenecks per stage. Multi-grid (1, 2, 4) times layer4's stage
# dilation (2 at stride 16, 4 at stride 8); torchvision's first dilated block keeps the
# previous dilation. Layer3 is dilated (by 2) at stride 8 only, in torchvision's layout.
ONES = ((1,) * 3, (1,) * 4, (1,) * 6)
DILATIONS = {
    (16, (1, 2, 4)): (*ONES, (2, 4, 8)),
    (8, (1, 2, 4)): (*ONES[:2], (1, 2, 2, 2, 2, 2), (4, 8, 16)),
    (16, None): (*ONES, (1, 2, 2)),
    (8, None): (*ONES[:2], (1, 2, 2, 2, 2, 2), (2, 4, 4)),
}


@pytest.mark.parametrize(("output_stride", "multi_grid"), list(DILATIONS))
def test_every_block_dilation(output_stride, multi_grid):
    expected = blocks(DILATIONS[output_stride, multi_grid])
    model = DeepLabV3Plus(output_stride=output_stride, multi_grid=multi_grid, **TINY)
    assert conv2_dilations(model) == expected
    resnet = ResNet(output_stride=output_stride, multi_grid=multi_grid)
    assert blocks(resnet.block_dilations()) == expected


def test_multi_grid_is_the_deeplab_default_and_torchvision_the_resnet_default():
    assert DeepLabV3Plus().multi_grid == (1, 2, 4)
    assert blocks(ResNet().block_dilations()) == blocks(DILATIONS[16, None])
    # Stride 32 dilates nothing, with or without multi-grid.
    for multi_grid in (None, (1, 2, 4)):
        assert set(ResNet(output_stride=32, multi_grid=multi_grid).block_dilations()[3]) == {1}


# IFE on the low-level features only (the authors' DeepLabV3+ test script): the first decoder
# conv takes 48 + int(0.75 * 48) = 84 low-level and 256 ASPP channels, 340 instead of 304, so
# it gains 9 * 256 * 36 = 82,944 weights over the plain 40,347,041.
def test_ratio_zero_switches_ife_off_at_that_point():
    model = DeepLabV3Plus(ife="entropy", ratios=(0.75, 0.0))
    assert n_params(model) == 40_347_041 + 9 * 256 * 36 == 40_429_985
    only_aspp = DeepLabV3Plus(ife="curvature", ratios=(0.0, 0.75))
    assert n_params(only_aspp) == 40_347_041 + 9 * 256 * 192
    # Zero everywhere is the plain network.
    assert n_params(DeepLabV3Plus(ife="entropy", ratios=(0.0, 0.0))) == 40_347_041


def test_low_level_only_ife_trains_one_step():
    model = DeepLabV3Plus(ife="curvature", ratios=(0.75, 0.0), **TINY)
    x = jax.random.normal(key(1), (2, 64, 64, 3))
    yy, xx = np.mgrid[:64, :64]
    mask = ((yy - 30) ** 2 + (xx - 34) ** 2 < 200).astype(np.float32)
    masks = jnp.asarray(np.broadcast_to(mask[None, :, :, None], (2, 64, 64, 1)))
    variables = random_variables(model, x.shape)
    step, opt = adam_step(model, variables, x, masks, rngs={"dropout": key(4)})
    new, opt, loss0, inter = step(variables["params"], opt)
    assert "ife_low" in inter and "ife_aspp" not in inter
    assert inter["ife_low"]["__call__"][0].shape == (2, 16, 16, 8 + 6)
    _, _, loss1, _ = step(new, opt)
    assert float(loss1) < float(loss0)


@pytest.mark.parametrize(
    ("size", "channels", "output_stride"), [(224, 3, 16), (288, 1, 8), (352, 3, 16)]
)
def test_output_shapes(size, channels, output_stride):
    model = DeepLabV3Plus(ife="entropy", output_stride=output_stride)
    x = jax.ShapeDtypeStruct((2, size, size - 64, channels), jnp.float32)
    y, v = jax.eval_shape(model.init_with_output, key(), x)
    assert y.shape == (2, size, size - 64, 1)
    assert v["params"]["decoder1"]["conv"]["kernel"].shape == (3, 3, 36 + 48 + 192 + 256, 256)
    assert v["params"]["backbone"]["conv1"]["kernel"].shape == (7, 7, channels, 64)


@pytest.mark.parametrize(
    ("output_stride", "expected"),
    [
        (32, [(16, 24), (8, 12), (4, 6), (2, 3)]),
        (16, [(16, 24), (8, 12), (4, 6), (4, 6)]),
        (8, [(16, 24), (8, 12), (8, 12), (8, 12)]),
    ],
)
def test_dilation_replaces_stride(output_stride, expected):
    x = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
    model = ResNet(output_stride=output_stride, base_width=4)
    feats, _ = jax.eval_shape(model.init_with_output, key(), x)
    assert [f.shape[1:3] for f in feats] == expected
    assert [f.shape[3] for f in feats] == [16, 32, 64, 128]


@pytest.mark.parametrize(
    ("kwargs", "shape", "match"),
    [
        ({}, (1, 72, 64, 3), "divisible by 16"),
        ({"output_stride": 32}, (1, 64, 64, 3), "output_stride"),
        ({"backbone": "resnet18"}, (1, 64, 64, 3), "backbone"),
        ({"ife": "entropy", "ratios": (-0.25, 0.5)}, (1, 64, 64, 3), "ratio"),
        ({"ife": "entropy", "ratios": (0.75, 1.5)}, (1, 64, 64, 3), "ratio"),
        ({"multi_grid": (1, 2)}, (1, 64, 64, 3), "multi_grid"),
        ({"multi_grid": (0, 1, 2)}, (1, 64, 64, 3), "multi_grid"),
        ({"ife": "curvature"}, (1, 32, 64, 3), "at least 48 pixels"),
    ],
)
def test_bad_arguments(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        n_params(DeepLabV3Plus(**TINY, **kwargs), shape)


def test_ife_selected_first_and_train_eval_modes():
    model = DeepLabV3Plus(ife="curvature", **TINY)
    x = jax.random.normal(key(1), (2, 64, 64, 1))
    variables = random_variables(model, x.shape)

    @jax.jit
    def run(variables, x, dropout_key):
        ev, inter = model.apply(variables, x, capture_intermediates=True, mutable="intermediates")
        tr, upd = model.apply(
            variables, x, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
        )
        return ev, inter["intermediates"], tr, upd["batch_stats"]

    ev, inter, tr1, stats = run(variables, x, key(2))
    _, _, tr2, _ = run(variables, x, key(3))
    assert ev.shape == tr1.shape == (2, 64, 64, 1)
    # Eval is deterministic and uses running stats; training draws dropout and updates stats.
    assert not np.allclose(np.asarray(tr1), np.asarray(tr2))
    assert not np.allclose(np.asarray(tr1), np.asarray(ev))
    old = variables["batch_stats"]["low_level"]["bn"]["mean"]
    assert not np.allclose(np.asarray(stats["low_level"]["bn"]["mean"]), np.asarray(old))

    low = np.asarray(inter["low_level"]["__call__"][0])  # (2, 16, 16, 8)
    enhanced = np.asarray(inter["ife_low"]["__call__"][0])
    idx = np.argsort(-np.asarray(curvature_scores(low)), axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(np.asarray(inter["ife_low"]["indices"][0]), idx)
    selected = np.take_along_axis(low, idx[:, None, None, :], 3)
    np.testing.assert_array_equal(enhanced, np.concatenate([selected, low], -1))
    aspp = inter["ife_aspp"]["__call__"][0]
    assert aspp.shape == (2, 4, 4, 8 + 6)
