"""Convolutions that train fast on CPU and keep XLA's own kernels (cuDNN) elsewhere.

Two changes against ``flax.linen``'s defaults, both with the same parameters:

- :func:`conv_general_dilated` is a drop-in for ``lax.conv_general_dilated`` (:class:`Conv` is
  ``nn.Conv`` calling it). For 2-D NHWC stride-1 convolutions it is a
  ``jax.custom_vjp`` whose forward is XLA's own (bit for bit), and whose kernel gradient on
  CPU is a blocked im2col: a loop over blocks of output rows that builds a few MB of patches
  at a time and accumulates ``patches^T @ grad`` in float32. XLA:CPU's own kernel gradient is
  about 4x slower than its forward at UNet's shapes and barely uses a second core. The input
  gradient is XLA's own, except on CPU at small maps with many channels (UNet's 14^2
  bottleneck), where it is one matrix product and a col2im (:func:`col2im_input_grad`). On
  every other platform both gradients are XLA's (``lax.platform_dependent``), and so is the
  kernel gradient in a process with several CPU devices (:func:`_several_cpu_devices`). For 1x1
  convolutions (heads, projections) of 32 input channels or more, both CPU gradients are one
  matrix product each, whatever their size.
- :class:`ConvTranspose` computes a transposed convolution whose kernel equals its stride
  (UNet's and nnU-Net's 2x2/stride-2 upsampling) as one matrix product followed by a reshape
  that interleaves the outputs, instead of a convolution over a zero-dilated input. Its CPU
  gradient gathers the output gradient's tiles back into rows once for both products.
- :class:`Conv` also reads IFE's output left unbuilt (a :class:`~ife_jax.nn.concat.ChannelConcat`):
  on CPU a convolution of raw features and their selected copies becomes, per sample, a
  convolution of the raw features alone with the copies' kernel rows added onto the rows of
  the channels they copy (:func:`concat_conv`), so the copies cost no multiply-adds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ife_jax.nn.concat import ChannelConcat
from ife_jax.nn.init import lecun_normal

#: Bytes of im2col patches built per block of the CPU kernel gradient. A few MB keep the
#: patches in the last-level cache while the matrix product is still large enough to thread.
PATCH_BLOCK_BYTES = 4 * 2**20

#: Gradients of at most this many output pixels (B * H' * W') take one block: at UNet's 14^2
#: bottleneck, blocks of a few rows make products too short to run fast (1.4-2.3x slower).
ONE_BLOCK_PIXELS = 1024

_NHWC = ("NHWC", "HWIO", "NHWC")


def _several_cpu_devices() -> bool:
    """Whether the process sees more than one CPU device (``jax_num_cpu_devices``,
    ``--xla_force_host_platform_device_count``, or several processes), read when a gradient is
    traced.

    There the kernel gradient is XLA's own, not the blocked im2col: XLA:CPU (jaxlib 0.10.2)
    deadlocked when the im2col's loop over blocks ran beside the gradients' all-reduces of a
    step split over two CPU devices of a 2-core machine (the reference UNet at 224 px: "waiting
    for all reduce ... may be stuck", then the process aborts after 40 s); with XLA's kernel
    gradient the same step ran.
    """
    return len(jax.devices("cpu")) > 1


def _explicit_padding(padding, x_shape, k_shape, dilation) -> tuple[tuple[int, int], ...] | None:
    """``padding`` as ((lo, hi), (lo, hi)) for a stride-1 2-D convolution; None if unusable."""
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(k_shape, dilation, strict=True)]
        return tuple(lax.padtype_to_pads(x_shape, dilated, (1, 1), padding))
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != 2 or any(p < 0 for pair in pads for p in pair):
        return None
    return pads


def _fast_path_args(
    lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers
):
    """(padding, dilation) when the custom kernel gradient applies to a convolution of one
    feature and batch group, else None."""
    if lhs.ndim != 4 or rhs.ndim != 4 or dimension_numbers is None:
        return None
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dn != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
        return None
    if tuple(window_strides) != (1, 1) or (lhs_dilation and tuple(lhs_dilation) != (1, 1)):
        return None
    dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
    pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], dilation)
    if pads is None:
        return None
    return pads, dilation


#: The custom kernel gradient is used only where it pays off: both channel counts at least
#: CUSTOM_GRAD_MIN_CHANNELS and at least CUSTOM_GRAD_MIN_FLOPS multiply-adds x 2 in the product.
#: Measured on one core of an Intel Xeon at batch 4 (XLA's own / the im2col): 224^2 x 8 and x 16
#: 0.84 and 0.76, 56^2 x 32 0.48, 24^2 x 64 0.44, 24^2 x 128 0.89 (0.2-0.7 GFLOP); 96^2 x 32
#: 1.32, 48^2 x 64 1.11, 224^2 x 64 2.34, 56^2 x 256 4.31 (0.7-15 GFLOP). On two cores the first
#: convolution of the reference UNet (224^2, 3 -> 64) took 43.6 ms with XLA's own and 47.6 ms
#: with the im2col. The narrow UNet of the demo (widths 8-128, 96 px) trains 1.5x faster
#: with XLA's own kernel gradient for its small convolutions than with the im2col for all.
#: 1x1 convolutions take the custom gradients (one product each) from CUSTOM_GRAD_MIN_CHANNELS
#: input channels up, at any size: 1.3-7x faster than XLA's own at 4 x 224^2 x 64 -> 1 (UNet's
#: head), 4 x 56^2 x 256 -> 48, 4 x 28^2 x 512 -> 256 and 4 x 88^2 x 32 -> 32; at the demo's head
#: (4 x 96^2 x 8 -> 1) both take under 0.4 ms and the input gradient is slower as a product.
#: Small maps with many channels (see :data:`COL2IM_MAX_PIXELS`) take the custom gradients
#: whatever their FLOPs: at the reference UNet's 2^2 bottleneck (32 px inputs, batch 4) XLA's
#: own input gradient took 109 ms (512 -> 1024) and 348 ms (1024 -> 1024), the col2im 1.4 and
#: 2.8 ms; from 3^2 to 8^2 with 256-512 channels both custom gradients were 1.1-3.2x faster, and
#: the UNet's step at 32 px fell from 1.07 to 0.62 s.
CUSTOM_GRAD_MIN_CHANNELS = 32
CUSTOM_GRAD_MIN_FLOPS = 6e8


def _custom_grad_pays(lhs_shape: Sequence[int], rhs_shape: Sequence[int], pads, dilation) -> bool:
    """Whether a convolution takes the custom gradients: large enough (see
    :data:`CUSTOM_GRAD_MIN_FLOPS`), or with small output maps and many channels, where the CPU
    input gradient is a col2im (:func:`col2im_input_grad_is_faster`); read when the convolution
    is traced."""
    b, h, w, cin = lhs_shape
    kh, kw, _, cout = rhs_shape
    if (kh, kw) == (1, 1):
        return cin >= CUSTOM_GRAD_MIN_CHANNELS
    sizes = zip((h, w), pads, (kh, kw), dilation, strict=True)
    out = [n + lo + hi - (k - 1) * d for n, (lo, hi), k, d in sizes]  # stride 1
    if col2im_input_grad_is_faster((b, *out, cout), rhs_shape):
        return True
    flops = 2 * b * h * w * kh * kw * cin * cout  # a stride-1 output about the input's size
    return min(cin, cout) >= CUSTOM_GRAD_MIN_CHANNELS and flops >= CUSTOM_GRAD_MIN_FLOPS


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` with a faster kernel gradient on CPU.

    The custom gradient applies to 2-D convolutions in NHWC/HWIO layout with stride 1, no input
    dilation, one feature group, any kernel size, any kernel dilation and any non-negative
    padding ('SAME', 'VALID' or explicit pairs), large enough for it to pay off
    (:data:`CUSTOM_GRAD_MIN_CHANNELS`, :data:`CUSTOM_GRAD_MIN_FLOPS`) or with small output
    maps and many channels (:data:`COL2IM_MAX_PIXELS`, :data:`COL2IM_MIN_CHANNELS`); and to
    1x1 convolutions of that kind with at least :data:`CUSTOM_GRAD_MIN_CHANNELS` input
    channels, whose CPU gradients are then one matrix product each (no taps to shift, no
    patches to build). Everything else is ``lax.conv_general_dilated`` itself. Outputs are
    always bit-identical to ``lax.conv_general_dilated``.

    Args: as ``lax.conv_general_dilated``; lhs: (B, H, W, Cin), rhs: (kh, kw, Cin, Cout).
    Returns: (B, H', W', Cout).
    """
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
    fast = None
    if (
        feature_group_count == batch_group_count == 1
        and preferred_element_type is None
        and lhs.dtype == rhs.dtype
    ):
        fast = _fast_path_args(*args)
    if fast is not None and not _custom_grad_pays(lhs.shape, rhs.shape, *fast):
        fast = None
    if fast is None:
        return lax.conv_general_dilated(
            *args, feature_group_count, batch_group_count, precision, preferred_element_type
        )
    pads, dilation = fast
    return _conv(lhs, rhs, pads, dilation, precision)


def _xla_conv(x, w, pads, dilation, precision):
    return lax.conv_general_dilated(
        x, w, (1, 1), pads, rhs_dilation=dilation, dimension_numbers=_NHWC, precision=precision
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, pads, dilation, precision):
    return _xla_conv(x, w, pads, dilation, precision)


def _conv_fwd(x, w, pads, dilation, precision):
    return _xla_conv(x, w, pads, dilation, precision), (x, w)


def _xla_input_grad(x, w, g, pads, dilation, precision):
    """XLA's own input gradient of :func:`_xla_conv` at ``x``."""
    _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, w, pads, dilation, precision), x)
    return input_vjp(g)[0]


def _col2im_input_grad(x, w, g, pads, dilation, precision):
    """:func:`col2im_input_grad` for an input like ``x``, in its dtype."""
    dx = col2im_input_grad(g, w, x.shape[1:3], pads=pads, dilation=dilation, precision=precision)
    return dx.astype(x.dtype)


def _conv_bwd(pads, dilation, precision, res, g):
    x, w = res

    def xla_input_grad(g, w):
        return _xla_input_grad(x, w, g, pads, dilation, precision)

    def cpu_input_grad(g, w):
        return _col2im_input_grad(x, w, g, pads, dilation, precision)

    if col2im_input_grad_is_faster(g.shape, w.shape):
        dx = lax.platform_dependent(g, w, cpu=cpu_input_grad, default=xla_input_grad)
    else:
        dx = xla_input_grad(g, w)

    def xla_kernel_grad(x, g):
        _, kernel_vjp = jax.vjp(lambda w_: _xla_conv(x, w_, pads, dilation, precision), w)
        return kernel_vjp(g)[0]

    def cpu_kernel_grad(x, g):
        return im2col_kernel_grad(x, g, w.shape[:2], pads=pads, dilation=dilation).astype(w.dtype)

    if _several_cpu_devices():
        dw = xla_kernel_grad(x, g)
    else:
        dw = lax.platform_dependent(x, g, cpu=cpu_kernel_grad, default=xla_kernel_grad)
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def _accumulation_dtype(*dtypes):
    """float32, or float64 where an operand is float64."""
    return jnp.result_type(jnp.float32, *dtypes)


def im2col_kernel_grad(
    x: jax.Array,
    g: jax.Array,
    kernel_size: tuple[int, int],
    *,
    pads: tuple[tuple[int, int], tuple[int, int]],
    dilation: tuple[int, int] = (1, 1),
    block_bytes: int = PATCH_BLOCK_BYTES,
    one_block_pixels: int = ONE_BLOCK_PIXELS,
    per_sample: bool = False,
) -> jax.Array:
    """Kernel gradient of a stride-1 convolution, ``dW[i, j] = sum xp[b, y+d*i, x+d*j] g[b, y, x]``.

    ``xp`` is ``x`` zero-padded by ``pads``. Computed in blocks of output rows: each block's
    patches (B * rows * W', kh * kw * Cin) are multiplied by its (B * rows * W', Cout) gradient
    and summed in float32 (float64 for float64 inputs), so memory stays at ``block_bytes`` of
    patches whatever the image size.

    Args:
      x: (B, H, W, Cin) convolution input.
      g: (B, H', W', Cout) gradient of the convolution output.
      kernel_size: (kh, kw).
      pads: ((top, bottom), (left, right)) non-negative zero padding of ``x``.
      dilation: kernel dilation (dh, dw).
      block_bytes: bytes of patches per block.
      one_block_pixels: gradients of at most this many pixels (B * H' * W') are one block.
      per_sample: keep the sum of each sample apart (a batched product per block).
    Returns:
      (kh, kw, Cin, Cout) float32 (float64 for float64 inputs), or (B, kh, kw, Cin, Cout) with
      ``per_sample``.
    """
    (kh, kw), (dh, dw) = kernel_size, dilation
    acc_dtype = _accumulation_dtype(x.dtype, g.dtype)
    b, _, _, cin = x.shape
    _, ho, wo, cout = g.shape
    taps = kh * kw * cin
    row_bytes = b * wo * taps * jnp.dtype(x.dtype).itemsize
    if b * ho * wo <= one_block_pixels or (kh, kw) == (1, 1):  # 1x1: the patches are x
        rows = ho
    else:
        rows = int(min(ho, max(1, block_bytes // row_bytes)))
    blocks = math.ceil(ho / rows)
    extra = blocks * rows - ho  # zero gradient rows: they add nothing
    xp = jnp.pad(x, ((0, 0), (pads[0][0], pads[0][1] + extra), pads[1], (0, 0)))
    g = jnp.pad(g, ((0, 0), (0, extra), (0, 0), (0, 0)))
    span = rows + (kh - 1) * dh

    def block(i, acc):
        xs = lax.dynamic_slice_in_dim(xp, i * rows, span, axis=1)
        gs = lax.dynamic_slice_in_dim(g, i * rows, rows, axis=1)
        patches = jnp.concatenate(
            [
                xs[:, dh * p : dh * p + rows, dw * q : dw * q + wo, :]
                for p in range(kh)
                for q in range(kw)
            ],
            axis=-1,
        )
        # (Cout, taps) = g^T @ patches: XLA:CPU runs this orientation faster than the transpose.
        if per_sample:
            return acc + lax.dot_general(
                gs.reshape(b, -1, cout),
                patches.reshape(b, -1, taps),
                (((1,), (1,)), ((0,), (0,))),
                preferred_element_type=acc_dtype,
            )
        return acc + lax.dot_general(
            gs.reshape(-1, cout),
            patches.reshape(-1, taps),
            (((0,), (0,)), ((), ())),
            preferred_element_type=acc_dtype,
        )

    acc = jnp.zeros((b, cout, taps) if per_sample else (cout, taps), acc_dtype)
    acc = block(0, acc) if blocks == 1 else lax.fori_loop(0, blocks, block, acc)
    if per_sample:
        return jnp.swapaxes(acc, 1, 2).reshape(b, kh, kw, cin, cout)
    return acc.T.reshape(kh, kw, cin, cout)


#: The CPU input gradient is a matrix product and a col2im where the output-gradient maps have at
#: most this many pixels per image and both channel counts are at least COL2IM_MIN_CHANNELS
#: (UNet's 14^2 bottleneck; ResNet's last stage at output stride 16): XLA:CPU's own input
#: gradient runs 1.3-2.4x slower than the matrix product there, and is as fast or faster from
#: 28^2 up (the col2im's sums then cost more than the product saves).
COL2IM_MAX_PIXELS = 20 * 20
COL2IM_MIN_CHANNELS = 256


def col2im_input_grad_is_faster(g_shape: Sequence[int], w_shape: Sequence[int]) -> bool:
    """Whether the CPU input gradient of a (kh, kw, Cin, Cout) kernel on (B, H', W', Cout)
    output gradients is :func:`col2im_input_grad` (True) or XLA's own (False); a static rule."""
    _, ho, wo, _ = g_shape
    kh, kw, cin, cout = w_shape
    if (kh, kw) == (1, 1):  # no taps to shift: the product alone
        return True
    return ho * wo <= COL2IM_MAX_PIXELS and min(cin, cout) >= COL2IM_MIN_CHANNELS


def col2im_input_grad(
    g: jax.Array,
    w: jax.Array,
    input_size: tuple[int, int],
    *,
    pads: tuple[tuple[int, int], tuple[int, int]],
    dilation: tuple[int, int] = (1, 1),
    precision: Any = None,
) -> jax.Array:
    """Input gradient of a stride-1 convolution, ``dxp[b, y+d*i, x+d*j] += g[b, y, x] W[i, j]^T``.

    ``dxp`` is the gradient of the zero-padded input; the result is its crop to the input. One
    matrix product ``g (B*H'*W', Cout) @ W^T (Cout, kh*kw*Cin)`` gives every tap's contribution,
    then each tap's slice is shifted into place (a pad, negative where it crops) and summed: the
    transposed convolution written as a product and a col2im, with no patches of ``g``.

    Args:
      g: (B, H', W', Cout) gradient of the convolution output.
      w: (kh, kw, Cin, Cout) kernel.
      input_size: (H, W) of the convolution input.
      pads: ((top, bottom), (left, right)) non-negative zero padding of the input.
      dilation: kernel dilation (dh, dw).
      precision: of the matrix product, as ``lax.dot_general``.
    Returns:
      (B, H, W, Cin) float32 (float64 for float64 inputs).
    """
    kh, kw, cin, cout = w.shape
    acc_dtype = _accumulation_dtype(g.dtype, w.dtype)
    (dh, dw), (h, wd) = dilation, input_size
    b, ho, wo, _ = g.shape
    taps = lax.dot_general(
        g.reshape(-1, cout),
        w.reshape(kh * kw * cin, cout),
        (((1,), (1,)), ((), ())),
        precision=precision,
        preferred_element_type=acc_dtype,
    ).reshape(b, ho, wo, kh, kw, cin)
    zero = jnp.zeros((), acc_dtype)
    dx = None
    for i in range(kh):
        for j in range(kw):
            # Tap (i, j) of output pixel (y, x) reaches padded input (y + dh*i, x + dw*j).
            top, left = dh * i - pads[0][0], dw * j - pads[1][0]
            tap = lax.pad(
                taps[:, :, :, i, j],
                zero,
                ((0, 0, 0), (top, h - ho - top, 0), (left, wd - wo - left, 0), (0, 0, 0)),
            )
            dx = tap if dx is None else dx + tap
    return dx


#: On CPU a :class:`ChannelConcat` is convolved through per-sample folded kernels
#: (:func:`concat_conv`) in batches of at most FOLD_MAX_BATCH samples whose output maps have at
#: least FOLD_MIN_PIXELS pixels; otherwise the concatenation is built. Measured on two cores of
#: an Intel Xeon, one convolution's forward and both gradients with C raw channels, C/2 copies
#: and C others (extra time over the same convolution without the copies, folded / built):
#: 112^2, C = 128: 7% / 30% at batch 2, 2% / 35% at batch 8; 56^2, C = 256: 4% / 30% at batch
#: 1, 12-18% / 23-27% at batch 4, 22% / 22% at batch 8, 32% / 27% at batch 16; 28^2, C = 256:
#: 79% / 28% at batch 4 (one sample's convolution of a small map runs far below the batch's
#: speed). The copies must also be at least FOLD_MIN_COPIES of the kernel's input channels
#: (UNet's and nnU-Net's are 20-27%): DeepLabV3+E's decoder convolution, whose 36 copies are
#: 11% of its 340 input channels (56^2, batch 4), made the train step 2.9% slower folded than
#: built (median of 4 interleaved rounds: 10.6% against 7.7% over DeepLabV3+).
FOLD_MAX_BATCH = 8
FOLD_MIN_PIXELS = 56 * 56
FOLD_MIN_COPIES = 0.15


def concat_conv_folds(
    x_shape: Sequence[int], w_shape: Sequence[int], pads, dilation=(1, 1)
) -> bool:
    """Whether :func:`concat_conv` folds on CPU: a 2-D (B, H, W, C_x) input of at most
    :data:`FOLD_MAX_BATCH` samples, output maps of at least :data:`FOLD_MIN_PIXELS` pixels,
    copies that make at least :data:`FOLD_MIN_COPIES` of the (kh, kw, C, Cout) kernel's C
    input channels (``C - C_x`` of them), a convolution that takes the custom gradients
    (:func:`_custom_grad_pays` with the kernel's rows folded, (kh, kw, C_x, Cout)), and a
    process with one CPU device; read when the convolution is traced."""
    if len(x_shape) != 4 or x_shape[0] > FOLD_MAX_BATCH or _several_cpu_devices():
        return False
    kh, kw, cin, cout = w_shape
    if cin - x_shape[-1] < FOLD_MIN_COPIES * cin:
        return False
    sizes = zip(x_shape[1:3], pads, (kh, kw), dilation, strict=True)
    pixels = math.prod(n + lo + hi - (k - 1) * d for n, (lo, hi), k, d in sizes)
    if pixels < FOLD_MIN_PIXELS:
        return False
    return _custom_grad_pays(x_shape, (kh, kw, x_shape[-1], cout), pads, dilation)


def concat_conv(
    inputs: ChannelConcat,
    w: jax.Array,
    pads: tuple[tuple[int, int], tuple[int, int]],
    dilation: tuple[int, int] = (1, 1),
    precision: Any = None,
) -> jax.Array:
    """A stride-1 2-D convolution (NHWC, HWIO) of a :class:`ChannelConcat`, equal to
    ``conv_general_dilated(inputs.materialize(), w, ...)`` up to float rounding.

    Where :func:`concat_conv_folds` holds, on CPU, each sample is convolved over the distinct
    channels only, with the kernel rows of the channels it copies added onto the rows of the
    channels they copy (``W_b = segment_sum(W, source[b])``, in float32, or float64 for a
    float64 kernel): the copies cost no multiply-adds in the forward pass, the input gradient,
    or the kernel gradient (per-sample blocked im2col, then
    ``dW[j] = sum_b dW_b[source[b, j]]``). On other platforms, and where
    it does not hold, the concatenation is built and convolved as usual (cuDNN keeps its
    convolution). The folded sums are ordered differently: results differ from the built
    concatenation's by float rounding only (each output a sum of ``kh * kw * C`` products).

    Args:
      inputs: (B, H, W, C) as a :class:`ChannelConcat`, its arrays in ``w``'s dtype.
      w: (kh, kw, C, Cout) kernel.
      pads: ((top, bottom), (left, right)) non-negative zero padding.
      dilation: kernel dilation.
      precision: as ``lax.conv_general_dilated``.
    Returns:
      (B, H', W', Cout).
    """
    x_shape = (*inputs.shape[:-1], sum(a.shape[-1] for a in inputs.arrays))
    if not concat_conv_folds(x_shape, w.shape, pads, dilation):
        return _materialized_conv(inputs, w, pads, dilation, precision)
    return _concat_conv(inputs, w, pads, dilation, precision)


def _materialized_conv(inputs, w, pads, dilation, precision):
    return conv_general_dilated(
        inputs.materialize(),
        w,
        (1, 1),
        pads,
        rhs_dilation=dilation,
        dimension_numbers=_NHWC,
        precision=precision,
    )


def _fold_kernel(w: jax.Array, source: jax.Array, channels: int) -> jax.Array:
    """(B, kh, kw, channels, Cout): per sample, the rows of ``w`` summed by ``source[b]``
    (in float32, or float64 for a float64 ``w``, then cast to ``w``'s dtype)."""
    kh, kw, _, cout = w.shape
    acc_dtype = _accumulation_dtype(w.dtype)
    wide = w.astype(acc_dtype)

    def one(src):
        return jnp.zeros((kh, kw, channels, cout), acc_dtype).at[:, :, src, :].add(wide)

    return jax.vmap(one)(source).astype(w.dtype)


def _folded_forward(inputs, w, pads, dilation, precision):
    x, source = inputs.distinct()
    wb = _fold_kernel(w, source, x.shape[-1])
    return jnp.concatenate(
        [_xla_conv(x[i : i + 1], wb[i], pads, dilation, precision) for i in range(x.shape[0])]
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _concat_conv(inputs, w, pads, dilation, precision):
    return lax.platform_dependent(
        inputs,
        w,
        cpu=partial(_folded_forward, pads=pads, dilation=dilation, precision=precision),
        default=partial(_materialized_conv, pads=pads, dilation=dilation, precision=precision),
    )


def _concat_conv_fwd(inputs, w, pads, dilation, precision):
    return _concat_conv(inputs, w, pads, dilation, precision), (inputs, w)


def _concat_conv_bwd(pads, dilation, precision, res, g):
    inputs, w = res

    def rebuilt(arrays):
        return ChannelConcat(arrays=arrays, indices=inputs.indices, sources=inputs.sources)

    def default(arrays, w, g):
        _, vjp = jax.vjp(
            lambda a, w_: _materialized_conv(rebuilt(a), w_, pads, dilation, precision), arrays, w
        )
        return vjp(g)

    def cpu(arrays, w, g):
        x, source = rebuilt(arrays).distinct()
        wb = _fold_kernel(w, source, x.shape[-1])
        input_grad = (
            _col2im_input_grad
            if col2im_input_grad_is_faster((1, *g.shape[1:]), wb.shape[1:])
            else _xla_input_grad
        )
        dx = jnp.concatenate(
            [
                input_grad(x[i : i + 1], wb[i], g[i : i + 1], pads, dilation, precision)
                for i in range(x.shape[0])
            ]
        )
        dwb = im2col_kernel_grad(x, g, w.shape[:2], pads=pads, dilation=dilation, per_sample=True)
        dw = jnp.take_along_axis(dwb, source[:, None, None, :, None], axis=3).sum(0)
        splits = list(itertools.accumulate(a.shape[-1] for a in arrays))[:-1]
        return tuple(jnp.split(dx, splits, axis=-1)), dw.astype(w.dtype)

    d_arrays, dw = lax.platform_dependent(inputs.arrays, w, g, cpu=cpu, default=default)
    none = tuple(None for _ in inputs.indices)
    return ChannelConcat(arrays=d_arrays, indices=none, sources=inputs.sources), dw


_concat_conv.defvjp(_concat_conv_fwd, _concat_conv_bwd)


class Conv(nn.Conv):
    """``flax.linen.Conv`` (same parameters, bit-identical outputs) on the fast gradient.

    It also reads a :class:`~ife_jax.nn.concat.ChannelConcat` (IFE's output left unbuilt), with
    the parameters it would create for the built concatenation: a 2-D, stride-1 convolution of
    one feature group goes through :func:`concat_conv`; any other builds the concatenation.
    """

    kernel_init: Any = lecun_normal
    conv_general_dilated: Any = conv_general_dilated

    @nn.compact
    def __call__(self, inputs):
        if not isinstance(inputs, ChannelConcat):
            return super().__call__(inputs)
        # As Flax reads it: an integer kernel size is a 1-D kernel.
        ks = _as_tuple(self.kernel_size, 1)
        n = len(ks)
        pads = None
        plain = (
            n == 2
            and inputs.ndim == 4
            and self.shared_weights
            and self.mask is None
            and self.feature_group_count == 1
            and _as_tuple(1 if self.strides is None else self.strides, n) == (1, 1)
            and _as_tuple(1 if self.input_dilation is None else self.input_dilation, n) == (1, 1)
            and self.conv_general_dilated is conv_general_dilated
            and self.conv_general_dilated_cls is None
            and self.promote_dtype is nn.dtypes.promote_dtype
        )
        dilation = _as_tuple(1 if self.kernel_dilation is None else self.kernel_dilation, n)
        if plain:
            padding = nn.linear.canonicalize_padding(self.padding, n)
            if padding not in ("CIRCULAR", "REFLECT", "CAUSAL"):
                pads = _explicit_padding(padding, inputs.shape[1:3], ks, dilation)
        if pads is None:
            return super().__call__(inputs.materialize())
        kernel = self.param(
            "kernel", self.kernel_init, ks + (inputs.channels, self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        dtype = self.dtype or jnp.result_type(inputs.dtype, self.param_dtype)
        arrays = tuple(a.astype(dtype) for a in inputs.arrays)
        inputs = ChannelConcat(arrays=arrays, indices=inputs.indices, sources=inputs.sources)
        y = concat_conv(inputs, kernel.astype(dtype), pads, dilation, self.precision)
        if bias is not None:
            y += bias.astype(dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return y


def _as_tuple(v, n: int) -> tuple[int, ...]:
    return (int(v),) * n if isinstance(v, int) else tuple(int(i) for i in v)


class ConvTranspose(nn.Module):
    """``flax.linen.ConvTranspose`` (same parameters and outputs), fast when kernel == stride.

    When every kernel extent equals its stride and the padding is 'SAME' or 'VALID' (which then
    coincide), each input pixel writes its own ``k1 x k2 (x k3)`` output tile:
    ``y[b, k*i + p, k*j + q] = sum_c x[b, i, j, c] kernel[k-1-p, k-1-q, c] + bias`` (the taps
    reversed, as ``lax.conv_transpose`` correlates), one matrix product and a reshape. Other
    configurations call ``lax.conv_transpose`` exactly as Flax does.

    Attributes: as ``flax.linen.ConvTranspose`` (features, kernel_size, strides, padding,
    use_bias, dtype, param_dtype, precision, kernel_init, bias_init).
    Call: ``(B, *spatial, Cin) -> (B, *(spatial * strides), features)``.
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] | None = None
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = lecun_normal
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n = 1 if isinstance(self.kernel_size, int) else len(self.kernel_size)
        ks = _as_tuple(self.kernel_size, n)
        strides = _as_tuple(1 if self.strides is None else self.strides, n)
        if x.ndim != n + 2:
            raise ValueError(
                f"ConvTranspose with a {n}-D kernel expects (B, *{n} spatial, C) inputs; "
                f"got shape {x.shape}."
            )
        kernel = self.param(
            "kernel", self.kernel_init, ks + (x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if ks == strides and self.padding in ("SAME", "VALID"):
            y = _tile_upsample(x, kernel, self.precision)
        else:
            y = lax.conv_transpose(x, kernel, strides, self.padding, precision=self.precision)
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y


def _tile_upsample(x: jax.Array, kernel: jax.Array, precision) -> jax.Array:
    """``(B, *S, Cin) x (*K, Cin, Cout) -> (B, *(S * K), Cout)``: each pixel writes one K tile."""
    n = x.ndim - 2
    ks, cout = kernel.shape[:n], kernel.shape[-1]
    kernel = jnp.flip(kernel, tuple(range(n)))  # lax.conv_transpose correlates: taps reversed
    w = kernel.reshape(-1, kernel.shape[-2], cout)  # (prod K, Cin, Cout)
    w = jnp.moveaxis(w, 0, 1).reshape(kernel.shape[-2], -1)  # (Cin, prod K * Cout)
    return _tiles(x, w, tuple(ks), precision)


def _interleave_tiles(n: int) -> list[int]:
    """The transpose ``(B, S1, .., Sn, K1, .., Kn, C) -> (B, S1, K1, .., Sn, Kn, C)``."""
    return [0] + [a for i in range(n) for a in (1 + i, 1 + n + i)] + [1 + 2 * n]


def _tiles_xla(x, w, ks, precision):
    """``x @ w`` (B, *S, prod K * Cout), each pixel's K tile moved into place."""
    n, spatial, b = len(ks), x.shape[1:-1], x.shape[0]
    y = jnp.dot(x, w, precision=precision)
    y = y.reshape(b, *spatial, *ks, -1)
    y = jnp.transpose(y, _interleave_tiles(n))
    return y.reshape(b, *(s * k for s, k in zip(spatial, ks, strict=True)), -1)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _tiles(x, w, ks, precision):
    return _tiles_xla(x, w, ks, precision)


def _tiles_fwd(x, w, ks, precision):
    return _tiles_xla(x, w, ks, precision), (x, w)


def _tiles_bwd(ks, precision, res, g):
    """The gradient's tiles gathered back into rows (B * prod S, prod K * Cout) once, then both
    products read them. Differentiated op by op, XLA:CPU also transposes them whole for the
    kernel gradient: 2.2x slower at UNet's last upsampling (4 x 112^2 x 128 -> 224^2 x 64)."""
    x, w = res

    def xla_grads(x, w, g):
        _, vjp = jax.vjp(lambda x_, w_: _tiles_xla(x_, w_, ks, precision), x, w)
        return vjp(g)

    def cpu_grads(x, w, g):
        n, spatial, cin = len(ks), x.shape[1:-1], x.shape[-1]
        tiled = g.reshape(
            x.shape[0], *(v for s, k in zip(spatial, ks, strict=True) for v in (s, k)), -1
        )
        order = _interleave_tiles(n)
        back = sorted(range(len(order)), key=order.__getitem__)  # its inverse
        rows = jnp.transpose(tiled, back).reshape(-1, w.shape[1])
        dx = lax.dot_general(rows, w, (((1,), (1,)), ((), ())), precision=precision)
        dw = lax.dot_general(
            x.reshape(-1, cin), rows, (((0,), (0,)), ((), ())), precision=precision
        )
        return dx.reshape(x.shape).astype(x.dtype), dw.astype(w.dtype)

    return lax.platform_dependent(x, w, g, cpu=cpu_grads, default=xla_grads)


_tiles.defvjp(_tiles_fwd, _tiles_bwd)


__all__ = [
    "Conv",
    "ConvTranspose",
    "col2im_input_grad",
    "concat_conv",
    "conv_general_dilated",
    "im2col_kernel_grad",
]
