"""The fast convolutions: same outputs as Flax/XLA, gradients against a float64 NumPy reference.

Error model for the gradients: each gradient entry is a float32 sum of ``n`` products (the
reduction length: B * H' * W' for the kernel gradient, kh * kw * Cout for the input gradient).
Whatever the summation order, ``|fl(sum) - sum| <= gamma_n * sum |terms|`` with
``gamma_n = n u / (1 - n u)`` and ``u = 2**-24`` (Higham, Accuracy and Stability, eq. 3.5), the
``+1`` covering the rounding of each float32 product. The inputs are float32 values used
exactly by the float64 reference, so that is the whole error.
"""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracles import gamma, reference_conv_grads
from jax import lax

from ife_jax.nn import conv as conv_module
from ife_jax.nn.conv import (
    ConvTranspose,
    col2im_input_grad,
    col2im_input_grad_is_faster,
    conv_general_dilated,
    im2col_kernel_grad,
)

NHWC = ("NHWC", "HWIO", "NHWC")


#: The size rule as shipped (the fixture below lifts it for every test of this file).
SIZE_RULE = {
    "CUSTOM_GRAD_MIN_CHANNELS": conv_module.CUSTOM_GRAD_MIN_CHANNELS,
    "CUSTOM_GRAD_MIN_FLOPS": conv_module.CUSTOM_GRAD_MIN_FLOPS,
}


@pytest.fixture(autouse=True)
def custom_gradient_at_every_size(monkeypatch):
    """The tests below exercise the custom gradients on small shapes, which by default keep
    XLA's own (see ``CUSTOM_GRAD_MIN_FLOPS``); the size rule's test puts it back."""
    for name in SIZE_RULE:
        monkeypatch.setattr(conv_module, name, 0)


def normal(rng, shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


# (B, H, W, Cin, Cout, (kh, kw), dilation, padding): every variant the custom gradient handles.
FAST_CASES = [
    (1, 7, 5, 1, 3, (3, 3), 1, ((1, 1), (1, 1))),  # batch 1, one input channel
    (2, 9, 11, 3, 1, (3, 3), 1, ((1, 1), (1, 1))),  # one output channel
    (2, 9, 11, 3, 4, (3, 3), 2, ((2, 2), (2, 2))),  # dilation 2 (ResNet layer4, SINetV2 RF)
    (1, 13, 13, 2, 3, (3, 3), 6, ((6, 6), (6, 6))),  # ASPP rate 6: taps mostly in the padding
    (2, 8, 6, 2, 3, (1, 3), 1, ((0, 0), (1, 1))),  # SINetV2's 1 x k
    (1, 6, 8, 2, 3, (3, 1), 3, ((3, 3), (0, 0))),  # k x 1, dilated
    (2, 6, 7, 3, 2, (1, 1), 1, ((0, 0), (0, 0))),  # 1x1 heads and projections
    (1, 9, 9, 2, 2, (7, 7), 1, ((3, 3), (3, 3))),  # 7x7
    (2, 9, 8, 3, 4, (3, 3), 1, "SAME"),
    (2, 9, 8, 3, 4, (3, 3), 1, "VALID"),
    (1, 7, 6, 2, 3, (3, 3), 1, ((0, 2), (1, 0))),  # asymmetric
]


def fast_conv(x, w, pads, dilation):
    return conv_general_dilated(
        x, w, (1, 1), pads, rhs_dilation=(dilation,) * 2, dimension_numbers=NHWC
    )


def xla_conv(x, w, pads, dilation):
    return lax.conv_general_dilated(
        x, w, (1, 1), pads, rhs_dilation=(dilation,) * 2, dimension_numbers=NHWC
    )


def explicit(pads, x_shape, kernel, dilation):
    if not isinstance(pads, str):
        return pads
    dilated = [(k - 1) * dilation + 1 for k in kernel]
    return tuple(lax.padtype_to_pads(x_shape, dilated, (1, 1), pads))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", FAST_CASES, ids=str)
def test_forward_bit_equal_and_gradients_match_float64(case, jit):
    b, h, w_, cin, cout, kernel, d, pads = case
    rng = np.random.default_rng(len(str(case)))
    x, w = normal(rng, (b, h, w_, cin)), normal(rng, (*kernel, cin, cout))
    y = fast_conv(x, w, pads, d)
    np.testing.assert_array_equal(y, xla_conv(x, w, pads, d))
    r = normal(rng, y.shape)

    def loss(x, w):
        return jnp.sum(fast_conv(x, w, pads, d) * r)

    grad = jax.grad(loss, (0, 1))
    dx, dw = (jax.jit(grad) if jit else grad)(x, w)
    y64, dx64, dx_mag, dw64, dw_mag = reference_conv_grads(
        x, w, r, explicit(pads, x.shape[1:3], kernel, d), (d, d)
    )
    n_dw = b * y.shape[1] * y.shape[2]
    n_dx = kernel[0] * kernel[1] * cout
    assert dw.dtype == jnp.float32 and dw.shape == w.shape
    np.testing.assert_array_less(
        np.abs(np.asarray(dw, np.float64) - dw64), gamma(n_dw + 1) * dw_mag + 1e-30
    )
    np.testing.assert_array_less(
        np.abs(np.asarray(dx, np.float64) - dx64), gamma(n_dx + 1) * dx_mag + 1e-30
    )
    # The oracle itself: its forward agrees with XLA's within the forward's own error bound.
    y_mag = reference_conv_grads(
        np.abs(x), np.abs(w), np.zeros(r.shape), explicit(pads, x.shape[1:3], kernel, d), (d, d)
    )[0]
    np.testing.assert_array_less(
        np.abs(np.asarray(y, np.float64) - y64),
        gamma(kernel[0] * kernel[1] * cin + 1) * y_mag + 1e-30,
    )


def test_input_gradient_is_xlas_own():
    rng = np.random.default_rng(1)
    x, w = normal(rng, (2, 9, 7, 5)), normal(rng, (3, 3, 5, 6))
    r = normal(rng, (2, 9, 7, 6))
    pads = ((1, 1), (1, 1))

    def dx(conv):
        return jax.jit(jax.grad(lambda x: jnp.sum(conv(x, w, pads, 1) * r)))(x)

    np.testing.assert_array_equal(dx(fast_conv), dx(xla_conv))


@pytest.mark.parametrize("case", FAST_CASES, ids=str)
def test_col2im_input_gradient_matches_float64(case):
    # Random kernels with kh != kw, Cin != Cout and asymmetric padding: a tap flipped or
    # transposed the wrong way, or shifted by the wrong padding, lands on other entries.
    b, h, w_, cin, cout, kernel, d, pads = case
    rng = np.random.default_rng(len(str(case)) + 1)
    x, w = normal(rng, (b, h, w_, cin)), normal(rng, (*kernel, cin, cout))
    pads = explicit(pads, x.shape[1:3], kernel, d)
    r = normal(rng, xla_conv(x, w, pads, d).shape)
    dx = jax.jit(col2im_input_grad, static_argnums=2, static_argnames=("pads", "dilation"))(
        r, w, (h, w_), pads=pads, dilation=(d, d)
    )
    _, dx64, dx_mag, _, _ = reference_conv_grads(x, w, r, pads, (d, d))
    assert dx.shape == x.shape and dx.dtype == jnp.float32
    np.testing.assert_array_less(
        np.abs(np.asarray(dx, np.float64) - dx64),
        gamma(kernel[0] * kernel[1] * cout + 1) * dx_mag + 1e-30,
    )


def test_cpu_input_gradient_of_wide_small_maps_is_col2im():
    # 4 x 4 output pixels and >= 256 channels: the compiled CPU gradient holds no convolution
    # (the loss is linear in the output, so the forward is not needed; XLA's gradients would be
    # two), the input and kernel gradients are matrix products.
    b, h, w_, cin, cout, kernel, d = 1, 5, 4, 256, 260, (3, 2), 2
    pads = ((2, 1), (0, 2))
    rng = np.random.default_rng(7)
    x, w = normal(rng, (b, h, w_, cin)), normal(rng, (*kernel, cin, cout))
    r = normal(rng, (b, 4, 4, cout))
    assert col2im_input_grad_is_faster(r.shape, w.shape)
    assert not col2im_input_grad_is_faster((4, 28, 28, 512), (3, 3, 512, 512))
    assert not col2im_input_grad_is_faster((4, 14, 14, 128), (3, 3, 128, 128))
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(fast_conv(x, w, pads, d) * r), (0, 1)))
    assert grad.lower(x, w).compile().as_text().count(" convolution(") == 0
    dx, dw = grad(x, w)
    _, dx64, dx_mag, dw64, dw_mag = reference_conv_grads(x, w, r, pads, (d, d))
    np.testing.assert_array_less(
        np.abs(np.asarray(dx, np.float64) - dx64),
        gamma(kernel[0] * kernel[1] * cout + 1) * dx_mag + 1e-30,
    )
    np.testing.assert_array_less(
        np.abs(np.asarray(dw, np.float64) - dw64), gamma(b * 4 * 4 + 1) * dw_mag + 1e-30
    )


@pytest.mark.parametrize("block_bytes", [1, 2 * 6 * 9 * 3 * 4, 10**9])
def test_blocked_kernel_gradient_with_a_partial_last_block(block_bytes):
    # 7 output rows in blocks of 1, 2 (4 blocks, the last half empty) and 7 rows.
    rng = np.random.default_rng(2)
    x, r = normal(rng, (2, 7, 6, 3)), normal(rng, (2, 7, 6, 4))
    w = jnp.zeros((3, 3, 3, 4))
    pads = ((1, 1), (1, 1))
    dw = im2col_kernel_grad(x, r, (3, 3), pads=pads, block_bytes=block_bytes, one_block_pixels=0)
    _, _, _, dw64, dw_mag = reference_conv_grads(x, w, r, pads, (1, 1))
    np.testing.assert_array_less(
        np.abs(np.asarray(dw, np.float64) - dw64), gamma(2 * 7 * 6 + 1) * dw_mag + 1e-30
    )


def test_cpu_kernel_gradient_is_the_im2col_product():
    # On CPU the compiled gradient holds two convolutions (forward, input gradient), not three.
    rng = np.random.default_rng(3)
    x, w = normal(rng, (1, 8, 8, 2)), normal(rng, (3, 3, 2, 3))
    pads = ((1, 1), (1, 1))

    def convolutions(conv):
        g = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w, pads, 1) ** 2), (0, 1)))
        return g.lower(x, w).compile().as_text().count(" convolution(")

    assert convolutions(xla_conv) == 3
    assert convolutions(fast_conv) == 2


def test_several_cpu_devices_keep_xlas_kernel_gradient(monkeypatch):
    # The im2col's loop over blocks beside a split step's all-reduces deadlocked XLA:CPU: with
    # several CPU devices the kernel gradient is XLA's convolution and the program has no loop.
    rng = np.random.default_rng(3)
    # 147 kB of patches per output row: 3 blocks of 4 MB (PATCH_BLOCK_BYTES).
    x, w = normal(rng, (2, 64, 64, 32)), normal(rng, (3, 3, 32, 4))
    pads = ((1, 1), (1, 1))

    def compiled():
        g = jax.jit(jax.grad(lambda x, w: jnp.sum(fast_conv(x, w, pads, 1) ** 2), (0, 1)))
        return g.lower(x, w).compile().as_text()

    one = compiled()
    assert one.count(" convolution(") == 2 and " while(" in one
    monkeypatch.setattr(conv_module, "_several_cpu_devices", lambda: True)
    several = compiled()
    assert several.count(" convolution(") == 3 and " while(" not in several


def test_several_cpu_devices_are_detected():
    # A fresh process with two CPU devices (the flag must be set before JAX starts).
    code = "from ife_jax.nn import conv; print(conv._several_cpu_devices())"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split()[-1:] == ["True"], out.stderr[-2000:]
    assert conv_module._several_cpu_devices() is (len(jax.devices("cpu")) > 1)


def test_bfloat16_kernel_gradient_keeps_the_kernel_dtype():
    rng = np.random.default_rng(4)
    x, w = normal(rng, (1, 6, 6, 2)), normal(rng, (3, 3, 2, 2))
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    pads = ((1, 1), (1, 1))
    dw = jax.grad(lambda w: jnp.sum(fast_conv(xb, w, pads, 1).astype(jnp.float32)))(wb)
    assert dw.dtype == jnp.bfloat16
    ones = np.ones((1, 6, 6, 2))
    _, _, _, dw64, dw_mag = reference_conv_grads(xb.astype(jnp.float32), w, ones, pads, (1, 1))
    # float32 accumulation, then one bfloat16 rounding (u = 2**-8) of the result.
    np.testing.assert_array_less(
        np.abs(np.asarray(dw, np.float64) - dw64), (gamma(37) + 2.0**-8) * dw_mag + 1e-30
    )


FALLBACK_CASES = [
    dict(window_strides=(2, 2), padding=((1, 1), (1, 1))),  # strided
    dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), lhs_dilation=(2, 2)),
    dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), feature_group_count=2),
    dict(window_strides=(1, 1), padding=((-1, 1), (1, 1))),  # negative padding (a crop)
]


@pytest.mark.parametrize("kwargs", FALLBACK_CASES, ids=str)
def test_other_configurations_are_xlas_convolution(kwargs):
    rng = np.random.default_rng(5)
    groups = kwargs.get("feature_group_count", 1)
    x, w = normal(rng, (2, 9, 8, 4)), normal(rng, (3, 3, 4 // groups, 6))

    def loss(conv, x, w):
        return jnp.sum(conv(x, w, dimension_numbers=NHWC, **kwargs) ** 2)

    np.testing.assert_array_equal(
        conv_general_dilated(x, w, dimension_numbers=NHWC, **kwargs),
        lax.conv_general_dilated(x, w, dimension_numbers=NHWC, **kwargs),
    )
    ours = jax.jit(jax.grad(lambda x, w: loss(conv_general_dilated, x, w), (0, 1)))(x, w)
    xla = jax.jit(jax.grad(lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1)))(x, w)
    for a, b in zip(ours, xla, strict=True):
        np.testing.assert_array_equal(a, b)


def test_flax_conv_with_the_fast_convolution_is_bit_equal():
    rng = np.random.default_rng(6)
    x = normal(rng, (1, 9, 7, 3))
    plain = nn.Conv(5, (3, 3), padding=((2, 2), (2, 2)), kernel_dilation=(2, 2))
    fast = plain.clone(conv_general_dilated=conv_general_dilated)
    v = plain.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, fast.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, v)
    np.testing.assert_array_equal(fast.apply(v, x), plain.apply(v, x))

    def convolutions(module):  # in the compiled kernel gradient: XLA's path has one, CPU's none
        grad = jax.jit(jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 2)))
        return grad.lower(v).compile().as_text().count(" convolution(")

    assert convolutions(plain) == 2
    assert convolutions(fast) == 1


# (input shape, kernel size, padding): 2x2 and 1x2 (nnU-Net's anisotropic) and 2x2x2 tiles,
# batch 1 and one channel; the last two are not tiles and take lax.conv_transpose.
TRANSPOSE_CASES = [
    ((2, 3, 5, 4), (2, 2), "SAME"),
    ((1, 5, 3, 1), (2, 2), "VALID"),
    ((2, 3, 5, 3), (1, 2), "VALID"),
    ((1, 3, 2, 4, 2), (2, 2, 2), "VALID"),
    ((2, 4, 4, 3), (3, 3), "SAME"),
    ((2, 4, 4, 3), (2, 2), ((1, 0), (0, 1))),
]


@pytest.mark.parametrize(("shape", "kernel", "padding"), TRANSPOSE_CASES, ids=str)
def test_conv_transpose_equals_flax(shape, kernel, padding):
    rng = np.random.default_rng(7)
    x = normal(rng, shape)
    strides = kernel if kernel != (3, 3) else (2, 2)
    ref = nn.ConvTranspose(6, kernel, strides=strides, padding=padding)
    ours = ConvTranspose(6, kernel, strides=strides, padding=padding)
    v = ref.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, v)
    v = jax.tree.map(lambda a: normal(rng, a.shape), v)
    y, y_ref = ours.apply(v, x), ref.apply(v, x)
    assert y.shape == y_ref.shape
    if strides != kernel or padding not in ("SAME", "VALID"):
        np.testing.assert_array_equal(y, y_ref)
        return
    # Both are float32 sums over Cin products (each output sees one tap), orders may differ.
    mag = ref.apply(jax.tree.map(jnp.abs, v), jnp.abs(x))  # sum |x| |k| + |bias|
    bound = 2 * gamma(shape[-1] + 2) * np.asarray(mag, np.float64)
    np.testing.assert_array_less(np.abs(np.asarray(y, np.float64) - y_ref), bound + 1e-30)


# (input shape, kernel, padding, convolutions in the compiled gradient): 3 are XLA's own
# (forward, input and kernel gradients); the custom kernel gradient is a product (2 left); on
# small maps with >= 256 channels the input gradient is a col2im too (1 left, the forward).
SIZE_RULE_CASES = [
    ((2, 96, 96, 32), (3, 3, 32, 64), "SAME", 2),  # 0.68 GFLOP, 32 channels
    ((2, 96, 96, 16), (3, 3, 16, 64), "SAME", 3),  # 16 input channels
    ((2, 96, 96, 64), (3, 3, 64, 16), "SAME", 3),  # 16 output channels
    ((2, 48, 48, 32), (3, 3, 32, 64), "SAME", 3),  # 0.17 GFLOP
    ((4, 224, 224, 3), (3, 3, 3, 64), "SAME", 3),  # the reference UNet's first convolution
    ((4, 2, 2, 512), (3, 3, 512, 1024), "SAME", 1),  # its bottleneck at 32 px: 0.15 GFLOP
    ((2, 5, 5, 256), (3, 3, 256, 256), "SAME", 1),  # 25 output pixels, 256 channels
    ((1, 21, 20, 256), (3, 3, 256, 256), "SAME", 3),  # 420 output pixels, 0.5 GFLOP
    ((1, 22, 22, 256), (3, 3, 256, 256), "VALID", 1),  # 20 x 20 output pixels
    ((4, 4, 4, 128), (3, 3, 128, 256), "SAME", 3),  # small maps, 128 input channels
]


@pytest.mark.parametrize(("shape", "kernel", "padding", "convolutions"), SIZE_RULE_CASES, ids=str)
def test_size_rule_keeps_xlas_own_gradients_for_small_convolutions(
    shape, kernel, padding, convolutions, monkeypatch
):
    for name, value in SIZE_RULE.items():
        monkeypatch.setattr(conv_module, name, value)
    x, w = jnp.zeros(shape), jnp.zeros(kernel)

    def hlo(conv):
        def loss(x, w):
            return jnp.sum(conv(x, w, (1, 1), padding, dimension_numbers=NHWC) ** 2)

        return jax.jit(jax.grad(loss, (0, 1))).lower(x, w).as_text()

    assert hlo(conv_general_dilated).count("stablehlo.convolution") == convolutions
    assert hlo(lax.conv_general_dilated).count("stablehlo.convolution") == 3


@pytest.mark.parametrize(
    ("shape", "cout", "products"),
    [
        ((4, 224, 224, 64), 1, True),  # the reference UNet's head
        ((1, 14, 14, 300), 256, True),
        ((2, 5, 3, 32), 3, True),  # tiny, but 32 input channels
        ((4, 96, 96, 8), 1, False),  # the demo's head: 8 input channels
        ((2, 5, 3, 2), 3, False),
    ],
    ids=str,
)
def test_pointwise_gradients_are_products_from_32_input_channels(
    shape, cout, products, monkeypatch
):
    # 1x1 convolutions (heads, DeepLabV3+'s projections): with at least 32 input channels both
    # CPU gradients are matrix products whatever the size, and only the forward is a
    # convolution; narrower ones keep XLA's own gradients.
    for name, value in SIZE_RULE.items():
        monkeypatch.setattr(conv_module, name, value)
    x, w = jnp.zeros(shape), jnp.zeros((1, 1, shape[-1], cout))

    def hlo(conv):
        def loss(x, w):
            return jnp.sum(conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC) ** 2)

        return jax.jit(jax.grad(loss, (0, 1))).lower(x, w).as_text()

    assert hlo(conv_general_dilated).count("stablehlo.convolution") == (1 if products else 3)
    assert hlo(lax.conv_general_dilated).count("stablehlo.convolution") == 3


def test_bfloat16_pointwise_gradients_keep_their_dtypes():
    rng = np.random.default_rng(9)
    x, w = normal(rng, (2, 5, 4, 3)), normal(rng, (1, 1, 3, 2))
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    pads = ((0, 0), (0, 0))
    dx, dw = jax.grad(lambda x, w: jnp.sum(fast_conv(x, w, pads, 1).astype(jnp.float32)), (0, 1))(
        xb, wb
    )
    assert dx.dtype == dw.dtype == jnp.bfloat16
    ones = np.ones((2, 5, 4, 2))
    _, dx64, dx_mag, dw64, dw_mag = reference_conv_grads(
        xb.astype(jnp.float32), wb.astype(jnp.float32), ones, pads, (1, 1)
    )
    # float32 accumulation, then one bfloat16 rounding (u = 2**-8) of the result.
    for got, want, mag, n in ((dx, dx64, dx_mag, 2), (dw, dw64, dw_mag, 40)):
        np.testing.assert_array_less(
            np.abs(np.asarray(got, np.float64) - want), (gamma(n + 1) + 2.0**-8) * mag + 1e-30
        )


def reference_tile_grads(x, kernel, r):
    """float64 dL/dx, dL/dkernel and their sums of |terms| for L = sum(y * r), y the tiled
    transposed convolution (kernel == strides): tap t of every input pixel writes output pixel
    ``k * i + t`` through the flipped kernel's tap t."""
    n = x.ndim - 2
    ks = kernel.shape[:n]
    x64, r64 = np.asarray(x, np.float64), np.asarray(r, np.float64)
    flipped = np.flip(np.asarray(kernel, np.float64), tuple(range(n)))
    dx, dx_mag = np.zeros(x.shape), np.zeros(x.shape)
    dk, dk_mag = np.zeros(kernel.shape), np.zeros(kernel.shape)
    for tap in np.ndindex(*ks):
        rt = r64[(slice(None), *(slice(t, None, k) for t, k in zip(tap, ks, strict=True)))]
        dx += rt @ flipped[tap].T
        dx_mag += np.abs(rt) @ np.abs(flipped[tap]).T
        axes = tuple(range(n + 1))
        dk[tap] = np.tensordot(x64, rt, (axes, axes))
        dk_mag[tap] = np.tensordot(np.abs(x64), np.abs(rt), (axes, axes))
    flip = tuple(range(n))
    return dx, dx_mag, np.flip(dk, flip), np.flip(dk_mag, flip)


@pytest.mark.parametrize(("shape", "kernel", "padding"), TRANSPOSE_CASES[:4], ids=str)
def test_conv_transpose_gradients_match_float64(shape, kernel, padding):
    rng = np.random.default_rng(8)
    x = normal(rng, shape)
    module = ConvTranspose(5, kernel, strides=kernel, padding=padding)
    v = module.init(jax.random.key(0), x)
    v = jax.tree.map(lambda a: normal(rng, a.shape), v)
    r = normal(rng, module.apply(v, x).shape)
    dv, dx = jax.jit(jax.grad(lambda v, x: jnp.sum(module.apply(v, x) * r), (0, 1)))(v, x)
    k = v["params"]["kernel"]
    dx64, dx_mag, dk64, dk_mag = reference_tile_grads(x, k, r)
    taps = int(np.prod(kernel))
    np.testing.assert_array_less(
        np.abs(np.asarray(dx, np.float64) - dx64), gamma(taps * 5 + 1) * dx_mag + 1e-30
    )
    n_dk = int(np.prod(shape[:-1]))
    np.testing.assert_array_less(
        np.abs(np.asarray(dv["params"]["kernel"], np.float64) - dk64),
        gamma(n_dk + 1) * dk_mag + 1e-30,
    )
    # The bias gradient is the sum of r over every output pixel.
    bias64 = np.asarray(r, np.float64).reshape(-1, 5).sum(0)
    bias_mag = np.abs(np.asarray(r, np.float64)).reshape(-1, 5).sum(0)
    n_bias = int(np.prod(r.shape[:-1]))
    np.testing.assert_array_less(
        np.abs(np.asarray(dv["params"]["bias"], np.float64) - bias64), gamma(n_bias) * bias_mag
    )


def test_cpu_conv_transpose_gradient_reads_the_tiles_once(monkeypatch):
    # On CPU the output gradient's tiles are moved into rows once and both products read them;
    # differentiated op by op (the forward's own gradient, as other platforms get it), the tiles
    # are transposed a second time for the kernel gradient. The other transposes are the
    # kernel's taps, forward and back.
    x = jnp.zeros((1, 28, 28, 16))
    module = ConvTranspose(8, (2, 2), strides=(2, 2))
    v = module.init(jax.random.key(0), x)
    r = jnp.zeros((1, 56, 56, 8))

    def transposes():
        grad = jax.jit(jax.grad(lambda v, x: jnp.sum(module.apply(v, x) * r), (0, 1)))
        return grad.lower(v, x).as_text().count("stablehlo.transpose")

    assert transposes() == 3
    monkeypatch.setattr(conv_module, "_tiles", conv_module._tiles_xla)
    assert transposes() == 4
