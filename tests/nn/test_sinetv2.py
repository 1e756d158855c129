"""SINetV2 and its Res2Net-50 v1b backbone: sizes, where IFE acts, weights, one training step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _models import abstract_variables, random_variables
from _models import count as _count

from ife_jax.losses import structure_loss
from ife_jax.nn import IFE, Res2Net, SINetV2
from ife_jax.nn.res2net import (
    _shortcut_pool,
    load_pretrained_res2net,
    load_res2net_state_dict,
    res2net_to_state_dict,
)
from ife_jax.nn.sinetv2 import GRA

TINY = dict(blocks=(1, 1, 1, 1), planes=8)


def _abstract(model, shape=(1, 96, 96, 3)):
    return abstract_variables(model, shape)


def _random_variables(model, shape, seed=0):
    def other(name, leaf, rng):
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0, 0.01, leaf.shape), leaf.dtype)

    return random_variables(model, shape, other, seed=seed)


def test_parameter_counts_full_size():
    # Res2Net-50 v1b 26w4s has 25,718,352 parameters with its 1000-class classifier
    # (2048 * 1000 + 1000 = 2,049,000), which the backbone drops.
    assert _count(_abstract(Res2Net())["params"]) == 25_718_352 - 2_049_000
    plain = _count(_abstract(SINetV2())["params"])
    # SINetV2 is reported at 26.98M parameters, counting the unused classifier.
    assert plain == 24_926_642
    assert plain + 2_049_000 == 26_975_642
    # IFE adds one 3x3 convolution (with bias) per reverse stage: 32 + int(32 r) -> 32.
    extra = sum(9 * (32 + int(32 * r)) * 32 + 32 for r in (0.75, 0.75, 1.0))
    assert extra == 50_784
    for ife in ("curvature", "entropy"):
        assert _count(_abstract(SINetV2(ife=ife))["params"]) == plain + extra
    half = _count(_abstract(SINetV2(ife="entropy", ratios=(0.5, 0.5, 0.5)))["params"])
    assert half == plain + 3 * (9 * 48 * 32 + 32)
    # A ratio of 0 leaves that reverse stage without IFE and without the extra convolution.
    no_middle = _count(_abstract(SINetV2(ife="entropy", ratios=(0.75, 0.0, 1.0)))["params"])
    assert no_middle == plain + (9 * 56 * 32 + 32) + (9 * 64 * 32 + 32)
    off = _abstract(SINetV2(ife="curvature", ratios=(0.0, 0.0, 0.0)))["params"]
    assert _count(off) == plain


def test_backbone_stage_shapes():
    v = _abstract(Res2Net(), (1, 65, 63, 3))
    outs = jax.eval_shape(lambda v: Res2Net().apply(v, jnp.zeros((1, 65, 63, 3))), v)
    # Stem stride 2 then max-pool stride 2 (ceil for odd sizes), then three stride-2 stages.
    assert [o.shape for o in outs] == [
        (1, 17, 16, 256),
        (1, 9, 8, 512),
        (1, 5, 4, 1024),
        (1, 3, 2, 2048),
    ]


def test_output_shapes_full_size():
    model = SINetV2(ife="entropy")
    x = jnp.zeros((2, 352, 352, 3))
    v = _abstract(model, x.shape)
    outs, _ = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), v)
    assert len(outs) == 4 and len(model.output_weights) == 4
    assert all(o.shape == (2, 352, 352, 1) for o in outs)
    assert jax.eval_shape(lambda v: model.apply(v, x), v).shape == (2, 352, 352, 1)
    # Non-multiples of 32 still come back at input resolution.
    y = jnp.zeros((1, 200, 136, 3))
    assert jax.eval_shape(lambda v: model.apply(v, y), v).shape == (1, 200, 136, 1)


def test_ife_needs_three_by_three_deep_features():
    model = SINetV2(ife="curvature", **TINY)
    with pytest.raises(ValueError, match="at least 3 x 3"):
        _abstract(model, (1, 64, 64, 3))
    _abstract(model, (1, 65, 65, 3))
    _abstract(SINetV2(**TINY), (1, 64, 64, 3))  # no IFE, no limit


def test_gra_interleaves_the_reverse_map_after_every_group():
    x = jnp.arange(4 * 4 * 8, dtype=jnp.float32).reshape(1, 4, 4, 8)
    y = -jnp.ones((1, 4, 4, 1))
    seen = []

    def capture(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Conv) and context.module.name == "conv":
            seen.append(args[0])
        return next_fun(*args, **kwargs)

    gra = GRA(4)
    with nn.intercept_methods(capture):
        v = gra.init(jax.random.key(0, impl="rbg"), x, y)
    # [x_1, y, x_2, y, x_3, y, x_4, y] with x_i = channels 2i-2, 2i-1.
    parts = []
    for i in range(4):
        parts += [x[..., 2 * i : 2 * i + 2], y]
    np.testing.assert_array_equal(seen[0], jnp.concatenate(parts, -1))
    assert v["params"]["conv"]["kernel"].shape == (3, 3, 12, 8)
    assert v["params"]["score"]["kernel"].shape == (3, 3, 8, 1)


def test_shortcut_pool_matches_ceil_mode_average():
    x = np.random.default_rng(0).normal(size=(1, 5, 7, 2)).astype(np.float32)
    want = np.zeros((1, 3, 4, 2), np.float32)
    for i in range(3):
        for j in range(4):
            want[0, i, j] = x[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(0, 1))
    np.testing.assert_allclose(_shortcut_pool(jnp.asarray(x), 2), want, rtol=1e-6)


def _state_dict_variables(model, shape):
    v = _random_variables(model, shape, seed=3)
    return {k: jax.tree.map(np.asarray, t) for k, t in v.items()}


def test_state_dict_round_trip_and_names(tmp_path):
    full = _abstract(Res2Net(), (1, 64, 64, 3))
    names = set(res2net_to_state_dict(jax.tree.map(lambda s: np.zeros(s.shape), full), prefix=()))
    assert len(names) == 435  # every tensor of the public checkpoint but fc.* and counters
    assert {"conv1.0.weight", "conv1.4.running_var", "conv1.6.weight", "bn1.bias"} <= names
    assert {"layer1.0.convs.2.weight", "layer4.2.bns.0.running_mean"} <= names
    assert {"layer2.0.downsample.1.weight", "layer2.0.downsample.2.running_var"} <= names

    model = SINetV2(**TINY)
    src = _state_dict_variables(model, (1, 96, 96, 3))
    sd = res2net_to_state_dict(src)
    assert sd["layer1.0.conv1.weight"].shape == (4 * 3, 8, 1, 1)  # 4 groups of floor(8*26/64)
    sd["layer1.0.bn1.num_batches_tracked"] = np.array(5)
    sd["fc.weight"] = np.zeros((1000, 256), np.float32)
    np.savez(tmp_path / "r2n.npz", **sd)
    dst = _state_dict_variables(model, (1, 96, 96, 3))
    dst = jax.tree.map(np.zeros_like, dst)
    loaded = load_pretrained_res2net(dst, tmp_path / "r2n.npz")
    for c in ("params", "batch_stats"):
        jax.tree.map(np.testing.assert_array_equal, loaded[c]["backbone"], src[c]["backbone"])
    # Everything outside the backbone is untouched.
    np.testing.assert_array_equal(loaded["params"]["NCD"]["conv5"]["kernel"], 0)

    bad = dict(sd)
    del bad["layer3.0.convs.1.weight"]
    bad["layer9.0.conv1.weight"] = np.zeros(1)
    bad["layer1.0.conv3.weight"] = np.zeros((32, 12, 3, 3), np.float32)
    with pytest.raises(ValueError) as err:
        load_res2net_state_dict(dst, bad)
    msg = str(err.value)
    assert "missing from the state dict (1): layer3.0.convs.1.weight" in msg
    assert "unexpected in the state dict (1): layer9.0.conv1.weight" in msg
    assert "layer1.0.conv3.weight: file (32, 12, 3, 3), model expects (32, 12, 1, 1)" in msg


def test_grey_stem_sums_rgb_filters():
    model = Res2Net(**TINY)
    rgb = _state_dict_variables(model, (1, 64, 64, 3))
    grey = jax.tree.map(np.zeros_like, _state_dict_variables(model, (1, 64, 64, 1)))
    loaded = load_res2net_state_dict(grey, res2net_to_state_dict(rgb, prefix=()), prefix=())
    np.testing.assert_allclose(
        loaded["params"]["conv1_0"]["kernel"][:, :, 0],
        rgb["params"]["conv1_0"]["kernel"].sum(axis=2),
        rtol=1e-6,
    )


@pytest.fixture(scope="module")
def tiny_run():
    """One compiled training step of a tiny SINetV2 with entropy IFE, whose IFE outputs get
    ``eps`` times a fixed noise added (through a method interceptor); the compilation is shared
    by the two tests below, as it is the slow part on CPU."""
    model = SINetV2(ife="entropy", **TINY)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 96, 96, 3)), jnp.float32)
    yy, xx = np.mgrid[:96, :96]
    m = ((yy - 48) ** 2 + (xx - 40) ** 2 < 25**2).astype(np.float32)
    masks = jnp.asarray(np.stack([m, m[::-1]])[..., None])
    v = _random_variables(model, x.shape)
    tx = optax.adam(1e-4)
    enhanced_shapes = []

    def perturb(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        if isinstance(context.module, IFE) and context.method_name == "__call__":
            enhanced_shapes.append(y.shape)
            y = y + context.module.scope.get_variable("perturb", "eps") * jax.random.normal(
                jax.random.key(7), y.shape, y.dtype
            )
        return y

    def loss_fn(params, stats, eps, x, masks):
        eps_tree = {"ife2": {"eps": eps}, "ife3": {"eps": eps}, "ife4": {"eps": eps}}
        with nn.intercept_methods(perturb):
            outs, _ = model.apply(
                {"params": params, "batch_stats": stats, "perturb": eps_tree},
                x,
                train=True,
                mutable=["batch_stats"],
            )
        w = model.output_weights
        return sum(wi * structure_loss(o, masks) for wi, o in zip(w, outs, strict=True)), outs

    @jax.jit  # data as arguments, not constants: XLA would constant-fold the loss otherwise
    def step(params, stats, eps, x, masks):
        (loss, outs), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats, eps, x, masks
        )
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates), outs, loss

    def run(params, eps):
        return step(params, v["batch_stats"], jnp.float32(eps), x, masks)

    return run, v["params"], enhanced_shapes


@pytest.mark.slow  # shares a ~40-130 s CPU compile with the next test
def test_ife_reaches_only_the_reverse_stages(tiny_run):
    run, params, enhanced_shapes = tiny_run
    (_, base, _), (_, moved, _) = run(params, 0.0), run(params, 1.0)
    # TEM outputs at strides 8, 16, 32 with 32 + int(32 r) channels (selected first).
    assert sorted(set(enhanced_shapes)) == sorted([(2, 12, 12, 56), (2, 6, 6, 56), (2, 3, 3, 64)])
    np.testing.assert_array_equal(base[0], moved[0])  # the NCD output S_g
    for b, m in zip(base[1:], moved[1:], strict=True):
        assert float(jnp.max(jnp.abs(b - m))) > 1e-3


@pytest.mark.slow
def test_one_train_step_reduces_the_loss(tiny_run):
    run, params, _ = tiny_run
    params1, _, loss0 = run(params, 0.0)
    _, _, loss1 = run(params1, 0.0)
    assert np.isfinite(loss0) and float(loss1) < float(loss0)
