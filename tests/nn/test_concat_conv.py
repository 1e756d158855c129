"""Convolutions of IFE's concatenation with the copies left unbuilt (ChannelConcat, concat_conv).

Error model, against a float64 NumPy convolution of the built concatenation ``X`` (float32
inputs, used exactly by the reference). A folded kernel row is a float32 sum of at most ``C``
rows (``C`` the concatenation's channels), so each is within ``gamma_C`` of its exact sum
relative to the sum of their magnitudes; the convolution then sums ``n`` products of it.
Composed (Higham, lemma 3.3), every output is within ``gamma_(n + 1 + C)`` of the exact value
relative to the same sum taken over magnitudes, for:

- the output, ``n = kh * kw * C_x`` (``C_x`` the distinct channels);
- the input gradient, ``n = kh * kw * Cout``, a copied channel's gradient summing its copies';
- the kernel gradient, per-sample sums of ``H' * W'`` products, then ``B`` of those.

Whole networks are compared with folding on and off in float64, where both differ from the
exact result by rounding of order 1e-16 times the network's amplification.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import key
from _oracles import gamma, reference_conv_grads
from jax import lax

from ife_jax.nn import DeepLabV3Plus, NNUNet, UNet
from ife_jax.nn import conv as conv_module
from ife_jax.nn.concat import ChannelConcat, concat_channels
from ife_jax.nn.conv import Conv, concat_conv, concat_conv_folds

NHWC = ("NHWC", "HWIO", "NHWC")


def normal(rng, shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def picks(rng, b, c, k):
    return jnp.asarray(np.stack([rng.permutation(c)[:k] for _ in range(b)]), jnp.int32)


def numpy_materialized(arrays, indices, sources):
    """The concatenation built in NumPy (float64), and for each of its channels the (array,
    channel) it reads, per sample."""
    b = arrays[0].shape[0]
    parts, origin = [], []
    for a, idx in zip(sources, indices, strict=True):
        x = np.asarray(arrays[a], np.float64)
        if idx is None:
            parts.append(x)
            origin += [[(a, c)] * b for c in range(x.shape[-1])]
        else:
            idx = np.asarray(idx)
            parts.append(np.take_along_axis(x, idx.reshape(b, 1, 1, -1), axis=3))
            origin += [[(a, int(idx[i, j])) for i in range(b)] for j in range(idx.shape[1])]
    return np.concatenate(parts, axis=-1), origin


# (B, H, W, C, k, C_other, Cout, kernel, dilation, padding, layout): layout orders the raw
# features "x", their copies "s" and another array "o" (UNet: x s o; DeepLabV3+: o s x).
CASES = [
    (1, 7, 5, 1, 1, 2, 3, (3, 3), 1, ((1, 1), (1, 1)), "xso"),  # batch 1, one channel
    (2, 9, 11, 6, 3, 4, 5, (3, 3), 2, ((2, 2), (2, 2)), "osx"),  # dilated, selected first
    (3, 8, 6, 5, 5, 0, 4, (3, 3), 1, "SAME", "xs"),  # ratio 1: every channel copied
    (2, 7, 6, 4, 2, 3, 3, (3, 3), 1, ((0, 2), (1, 0)), "xso"),  # asymmetric padding
    (2, 6, 7, 4, 2, 3, 3, (1, 1), 1, ((0, 0), (0, 0)), "xso"),  # 1x1
    (2, 9, 8, 4, 2, 3, 4, (3, 3), 1, "VALID", "sxo"),
]


def build(case, rng):
    b, h, w_, c, k, c_other, cout, kernel, d, pads, layout = case
    x = jax.nn.relu(normal(rng, (b, h, w_, c)))
    other = normal(rng, (b, h, w_, max(c_other, 1)))
    idx = picks(rng, b, c, k)
    copies = ChannelConcat.with_copies(x, idx, raw_first=layout.index("x") < layout.index("s"))
    inputs = concat_channels(*(other if p == "o" else copies for p in layout.replace("s", "")))
    w = normal(rng, (*kernel, inputs.channels, cout))
    if not isinstance(pads, str):
        explicit = pads
    else:
        dilated = [(kk - 1) * d + 1 for kk in kernel]
        explicit = tuple(lax.padtype_to_pads((h, w_), dilated, (1, 1), pads))
    return inputs, w, explicit, (d, d)


def check_against_float64(inputs, w, pads, dilation, rng):
    """Asserts the error model's bounds on the output and all gradients of the folded conv."""
    arrays = inputs.arrays
    y = concat_conv_forced(inputs, w, pads, dilation)
    r = normal(rng, y.shape)

    def loss(arrays, w):
        return jnp.sum(concat_conv_forced(rebuilt(inputs, arrays), w, pads, dilation) * r)

    d_arrays, dw = jax.grad(loss, (0, 1))(arrays, w)
    mat, origin = numpy_materialized(arrays, inputs.indices, inputs.sources)
    y64, dmat64, dmat_mag, dw64, dw_mag = reference_conv_grads(mat, w, r, pads, dilation)
    y_mag = reference_conv_grads(np.abs(mat), np.abs(w), np.zeros(r.shape), pads, dilation)[0]
    kh, kw, cin, cout = w.shape
    c_x = sum(a.shape[-1] for a in arrays)
    b, ho, wo = y.shape[:3]
    np.testing.assert_array_less(
        np.abs(np.asarray(y, np.float64) - y64), gamma(kh * kw * c_x + 1 + cin) * y_mag + 1e-30
    )
    np.testing.assert_array_less(
        np.abs(np.asarray(dw, np.float64) - dw64), gamma(ho * wo + 1 + b + cin) * dw_mag + 1e-30
    )
    want = [np.zeros(a.shape) for a in arrays]
    mag = [np.zeros(a.shape) for a in arrays]
    for j, per_sample in enumerate(origin):  # a copied channel collects all its copies
        for i, (a, c) in enumerate(per_sample):
            want[a][i, ..., c] += dmat64[i, ..., j]
            mag[a][i, ..., c] += dmat_mag[i, ..., j]
    for got, exact, m in zip(d_arrays, want, mag, strict=True):
        assert got.dtype == jnp.float32
        np.testing.assert_array_less(
            np.abs(np.asarray(got, np.float64) - exact),
            gamma(kh * kw * cout + 1 + cin) * m + 1e-30,
        )


def rebuilt(inputs, arrays):
    return ChannelConcat(arrays=tuple(arrays), indices=inputs.indices, sources=inputs.sources)


def concat_conv_forced(inputs, w, pads, dilation):
    """The folded path whatever its size (the size rule would build tiny concatenations)."""
    return conv_module._concat_conv(inputs, w, pads, dilation, None)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_folded_convolution_and_gradients_match_float64(case):
    rng = np.random.default_rng(len(str(case)))
    inputs, w, pads, dilation = build(case, rng)
    check_against_float64(inputs, w, pads, dilation, rng)


def test_the_check_fails_on_a_fold_that_overwrites_rows(monkeypatch):
    # A channel both kept raw and copied must receive both kernel rows: ``.set`` instead of
    # ``.add`` keeps only one of them, and the bounds above catch it.
    def overwriting(w, source, channels):
        kh, kw, _, cout = w.shape
        return jax.vmap(
            lambda s: jnp.zeros((kh, kw, channels, cout), w.dtype).at[:, :, s, :].set(w)
        )(source)

    monkeypatch.setattr(conv_module, "_fold_kernel", overwriting)
    rng = np.random.default_rng(0)
    inputs, w, pads, dilation = build(CASES[3], rng)
    with pytest.raises(AssertionError):
        check_against_float64(inputs, w, pads, dilation, rng)


def test_cpu_program_convolves_only_the_distinct_channels():
    # C = 7 raw channels, 3 copies, 4 others: the concatenation has 14, the folded input 11.
    # On CPU the compiled gradient holds B forward and B input-gradient convolutions of one
    # sample each, none with 14 channels; the kernel gradient is the per-sample im2col.
    rng = np.random.default_rng(5)
    b, h, w_ = 3, 9, 12
    x, other = normal(rng, (b, h, w_, 7)), normal(rng, (b, h, w_, 4))
    inputs = concat_channels(ChannelConcat.with_copies(x, picks(rng, b, 7, 3)), other)
    w = normal(rng, (3, 3, 14, 5))
    pads = ((1, 1), (1, 1))

    def loss(arrays, w):
        return jnp.sum(concat_conv_forced(rebuilt(inputs, arrays), w, pads, (1, 1)) ** 2)

    text = jax.jit(jax.grad(loss, (0, 1))).lower(inputs.arrays, w).compile().as_text()
    shapes = [
        re.search(r"= f32\[([\d,]+)\]", line).group(1)
        for line in text.splitlines()
        if " convolution(" in line
    ]
    # Forward (1, H, W, Cout) and input gradient (1, H, W, 11) of each sample.
    assert sorted(shapes) == ["1,9,12,11"] * b + ["1,9,12,5"] * b


def test_folding_rule(monkeypatch):
    pads = ((1, 1), (1, 1))
    # UNet at 224 px, batch 4: the decoder convolution of c2 (256 distinct channels of 320).
    assert concat_conv_folds((4, 112, 112, 256), (3, 3, 320, 128), pads)
    assert concat_conv_folds((4, 56, 56, 512), (3, 3, 640, 256), pads)  # and of c3
    assert not concat_conv_folds((9, 112, 112, 256), (3, 3, 320, 128), pads)  # batch > 8
    assert not concat_conv_folds((4, 28, 28, 512), (3, 3, 640, 256), pads)  # small maps
    assert not concat_conv_folds((4, 56, 56, 512), (3, 3, 640, 256), ((0, 0), (0, 0)))
    assert not concat_conv_folds((4, 64, 64, 16), (3, 3, 20, 16), pads)  # few channels
    # DeepLabV3+E's decoder: 36 copies of 340 input channels (11%): built.
    assert not concat_conv_folds((4, 56, 56, 304), (3, 3, 340, 256), pads)
    assert concat_conv_folds((4, 56, 56, 304), (3, 3, 304 + 54, 256), pads)  # 15%
    assert not concat_conv_folds((4, 8, 8, 8, 16), (3, 3, 3, 20, 16), pads)  # 3-D: built
    monkeypatch.setattr(conv_module, "_several_cpu_devices", lambda: True)
    assert not concat_conv_folds((4, 112, 112, 256), (3, 3, 320, 128), pads)


def test_unfolded_sizes_build_the_concatenation_exactly():
    rng = np.random.default_rng(2)
    inputs, w, pads, dilation = build(CASES[0], rng)
    assert not concat_conv_folds(
        (*inputs.shape[:-1], sum(a.shape[-1] for a in inputs.arrays)), w.shape, pads, dilation
    )
    got = concat_conv(inputs, w, pads, dilation)
    want = lax.conv_general_dilated(
        inputs.materialize(), w, (1, 1), pads, rhs_dilation=dilation, dimension_numbers=NHWC
    )
    np.testing.assert_array_equal(got, want)


class Wrapped(nn.Module):
    """A Conv over ``[x, x[idx]]`` given lazily or built."""

    lazy: bool
    kwargs: dict

    @nn.compact
    def __call__(self, x, idx):
        inputs = ChannelConcat.with_copies(x, idx)
        return Conv(name="conv", **self.kwargs)(inputs if self.lazy else inputs.materialize())


@pytest.mark.parametrize(
    ("kwargs", "folds"),
    [
        (dict(features=3, kernel_size=(3, 3), padding=((1, 1), (1, 1))), True),
        (dict(features=3, kernel_size=(3, 3), padding="SAME", use_bias=False), True),
        (dict(features=3, kernel_size=(3, 3), strides=2), False),
        (dict(features=4, kernel_size=(3, 3), feature_group_count=2), False),
        (dict(features=3, kernel_size=(3, 3), padding="CIRCULAR"), False),
        (dict(features=3, kernel_size=3, padding="SAME"), False),  # Flax: a 1-D kernel
    ],
    ids=str,
)
def test_conv_module_reads_a_channel_concat_with_the_same_parameters(kwargs, folds, monkeypatch):
    monkeypatch.setattr(conv_module, "concat_conv_folds", lambda *a, **k: True)
    rng = np.random.default_rng(4)
    x, idx = normal(rng, (2, 8, 6, 4)), picks(rng, 2, 4, 2)
    lazy, built = Wrapped(True, kwargs), Wrapped(False, kwargs)
    v_lazy = lazy.init(jax.random.key(0), x, idx)
    v_built = built.init(jax.random.key(0), x, idx)
    assert jax.tree.structure(v_lazy) == jax.tree.structure(v_built)
    for a, b in zip(jax.tree.leaves(v_lazy), jax.tree.leaves(v_built), strict=True):
        np.testing.assert_array_equal(a, b)
    got, want = lazy.apply(v_built, x, idx), built.apply(v_built, x, idx)
    if not folds:  # the concatenation is built: the very same program
        np.testing.assert_array_equal(got, want)
    else:
        kernel = v_built["params"]["conv"]["kernel"]
        y_mag = jnp.abs(
            lax.conv_general_dilated(
                jnp.abs(ChannelConcat.with_copies(x, idx).materialize()),
                jnp.abs(kernel),
                (1, 1),
                ((1, 1), (1, 1)),
                dimension_numbers=NHWC,
            )
        )
        n = 9 * 4 + 1 + 6 + 1  # the bias adds one rounding
        np.testing.assert_array_less(np.abs(got - want), 2 * gamma(n) * y_mag + 1e-30)


def test_channel_concat_builds_and_maps_its_channels():
    rng = np.random.default_rng(6)
    x, y, z = normal(rng, (2, 3, 4, 5)), normal(rng, (2, 3, 4, 2)), normal(rng, (2, 3, 4, 3))
    ix, iz = picks(rng, 2, 5, 3), picks(rng, 2, 3, 1)
    cc = concat_channels(
        y, ChannelConcat.with_copies(x, ix), ChannelConcat.with_copies(z, iz, raw_first=False)
    )
    want, _ = numpy_materialized((y, x, z), (None, None, ix, iz, None), (0, 1, 1, 2, 2))
    assert cc.shape == (2, 3, 4, 2 + 5 + 3 + 1 + 3) == want.shape and cc.channels == 14
    np.testing.assert_array_equal(cc.materialize(), want.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(cc), want.astype(np.float32))  # as NumPy sees it
    distinct, source = cc.distinct()
    np.testing.assert_array_equal(distinct, np.concatenate([y, x, z], -1))
    np.testing.assert_array_equal(
        np.take_along_axis(np.asarray(distinct), np.asarray(source)[:, None, None, :], 3),
        want.astype(np.float32),
    )
    plain = concat_channels(x, y)
    assert isinstance(plain, jax.Array)
    np.testing.assert_array_equal(plain, np.concatenate([x, y], -1))


def test_concat_channels_names_mismatched_parts():
    x = jnp.zeros((2, 4, 4, 3))
    lazy = ChannelConcat.with_copies(x, jnp.zeros((2, 1), jnp.int32))
    with pytest.raises(ValueError, match=r"\(2, 4, 5, 3\)"):
        concat_channels(lazy, jnp.zeros((2, 4, 5, 3)))
    with pytest.raises(ValueError, match="bfloat16"):
        concat_channels(lazy, jnp.zeros((2, 4, 4, 3), jnp.bfloat16))


def test_bfloat16_folded_convolution_keeps_its_dtypes():
    rng = np.random.default_rng(7)
    inputs, w, pads, dilation = build(CASES[3], rng)
    arrays = tuple(a.astype(jnp.bfloat16) for a in inputs.arrays)
    w = w.astype(jnp.bfloat16)
    y = concat_conv_forced(rebuilt(inputs, arrays), w, pads, dilation)
    assert y.dtype == jnp.bfloat16

    def loss(arrays, w):
        out = concat_conv_forced(rebuilt(inputs, arrays), w, pads, dilation)
        return jnp.sum(out.astype(jnp.float32))

    d_arrays, dw = jax.grad(loss, (0, 1))(arrays, w)
    assert dw.dtype == jnp.bfloat16 and all(d.dtype == jnp.bfloat16 for d in d_arrays)
    assert all(bool(jnp.isfinite(d.astype(jnp.float32)).all()) for d in (*d_arrays, dw))


NETWORKS = {
    "UNet+E": lambda dt: UNet(
        ife="entropy", ratios=(0.5, 0.5), widths=(4, 8, 8, 16, 16), dtype=dt, param_dtype=dt
    ),
    "UNet+C": lambda dt: UNet(
        ife="curvature", ratios=(0.75, 0.5), widths=(4, 8, 8, 16, 16), dtype=dt, param_dtype=dt
    ),
    "DeepLabV3+C": lambda dt: DeepLabV3Plus(
        ife="curvature",
        ratios=(0.75, 0.0),
        base_width=4,
        aspp_features=8,
        low_level_features=8,
        decoder_features=8,
        dtype=dt,
        param_dtype=dt,
    ),
}


def run_network(model, x, fold, monkeypatch):
    monkeypatch.setattr(conv_module, "concat_conv_folds", lambda *a, **k: fold)
    variables = jax.jit(model.init)(key(1), x)
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def loss(params):
        out = model.apply(
            {"params": params, **rest},
            x,
            train=True,
            mutable=list(rest) or False,
            rngs={"dropout": key(2)},
        )
        out = out[0] if rest else out  # (outputs, updated statistics)
        out = out if isinstance(out, jax.Array) else out[0]  # nnU-Net: (main, *deep)
        return jnp.sum(out * jnp.cos(out)), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return variables, out, grads


@pytest.mark.parametrize("name", [*NETWORKS, "NNUNet+E"])
def test_networks_equal_with_and_without_folding_in_float64(name, monkeypatch):
    with jax.enable_x64(True):
        if name == "NNUNet+E":
            from ife_jax.nnunet.image_plans import NNUNetPlan

            plan = NNUNetPlan(
                patch_size=(32, 32),
                batch_size=2,
                features=(4, 8, 8, 16),
                strides=((1, 1), (2, 2), (2, 2), (2, 2)),
                in_channels=3,
                num_classes=1,
                ife_levels=(1, 2),
                ife_ratios=(0.5, 0.5),
                deep_supervision=False,
            )
            model = NNUNet(plan, ife="entropy", dtype=jnp.float64, param_dtype=jnp.float64)
        else:
            model = NETWORKS[name](jnp.float64)
        size = 64 if name.startswith("DeepLab") else 32
        x = jax.random.normal(key(0), (2, size, size, 3), jnp.float64)
        v1, out1, g1 = run_network(model, x, True, monkeypatch)
        v0, out0, g0 = run_network(model, x, False, monkeypatch)
        assert out1.dtype == jnp.float64
        for a, b in zip(jax.tree.leaves(v1), jax.tree.leaves(v0), strict=True):
            np.testing.assert_array_equal(a, b)  # same parameters: checkpoints load unchanged
        scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g0))
        assert float(jnp.max(jnp.abs(out1 - out0))) <= 1e-10 * float(jnp.max(jnp.abs(out0)))
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
            assert float(jnp.max(jnp.abs(a - b))) <= 1e-10 * scale
