"""Keras 3 networks with IFE: the classic UNet as a native functional model."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from ife_jax.keras.layers import IFELayer
from ife_jax.ops._checks import check_ife


def _conv_init():
    """He initialisation over the output fan (variance 2 / fan_out) from a truncated normal.

    The Flax networks use the same variance from an untruncated normal
    (``ife_jax.nn.layers.conv_init``), so the two start from different draws.
    """
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="truncated_normal")


def _conv_bn_relu(x, features: int, name: str, init):
    x = keras.layers.Conv2D(
        features, 3, padding="same", kernel_initializer=init(), name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _double_conv(x, features: int, name: str, init):
    """Two ``3x3 conv (bias) -> BatchNorm -> ReLU`` blocks, the classic UNet stage."""
    x = _conv_bn_relu(x, features, f"{name}_block0", init)
    return _conv_bn_relu(x, features, f"{name}_block1", init)


def unet(
    input_shape: Sequence[int | None] = (None, None, 3),
    *,
    ife: str | None = None,
    ratios: Sequence[float] = (0.5, 0.5),
    widths: Sequence[int] = (64, 128, 256, 512, 1024),
    num_classes: int = 1,
    bins: int = 256,
    entropy_mode: str = "paper",
    kernel_initializer=None,
    name: str = "unet",
) -> keras.Model:
    """The classic UNet with optional IFE on its skip features, as a Keras functional model.

    Encoder: five double-conv stages (``3x3 conv + BatchNorm + ReLU``, twice) of ``widths``
    channels with 2x2 max-pooling between them, giving c1 (full resolution) ... c5 (1/16).
    Decoder: at each level a 2x2 stride-2 transposed convolution halves the channels and doubles
    the resolution, the skip features are concatenated **first** (``[skip, upsampled]``), and a
    double conv follows. A 1x1 convolution gives the logits. With ``ife`` set, IFE is applied to
    the skip features c2 (ratio ``ratios[0]``) and c3 (ratio ``ratios[1]``) before their
    concatenation, raw channels first, so the decoder stages that consume them take
    ``w2 * (2 + r0)`` and ``w3 * (2 + r1)`` input channels (the reference's insertion points).
    A ratio of 0 leaves that skip without IFE (no ``IFELayer`` there, ``2 w`` channels).

    Layers are named after the Flax :class:`ife_jax.nn.UNet`'s modules (``down1_block0_conv``,
    ``down1_block0_bn``, ..., ``up1``, ``dec1_block0_conv``, ..., ``head``; ``ife_c2``,
    ``ife_c3``), so :func:`load_flax_unet_weights` can copy a trained Flax UNet into it.

    With the default widths, 3 input channels and ``ife=None`` the model has 31,043,521
    trainable parameters (plus 11,776 BatchNorm moving statistics).

    BatchNorm uses momentum 0.9 and epsilon 1e-5 (PyTorch's 0.1 and 1e-5). Under a mixed
    precision policy the layers compute in bfloat16 and the logits come out in that dtype.

    Args:
      input_shape: (H, W, C_in); H and W may be None. Known H and W must be divisible by 16
        (more generally by ``2 ** (len(widths) - 1)``).
      ife: ``None``, ``"curvature"`` or ``"entropy"``.
      ratios: the IFE ratios on c2 and c3, each in [0, 1] (0: no IFE on that skip).
      widths: the five stage widths.
      num_classes: output channels (1 for dichotomous segmentation).
      bins, entropy_mode: passed to :class:`ife_jax.keras.IFELayer`.
      kernel_initializer: initializer of every convolution kernel (anything
        ``keras.initializers.get`` accepts); ``None`` gives He initialisation over the output
        fan (variance 2 / fan_out) from a truncated normal: the variance of the Flax networks,
        which draw from an untruncated normal. Biases start at zero.
      name: the model name.

    Returns:
      A ``keras.Model`` mapping (B, H, W, C_in) images to (B, H, W, num_classes) logits.

    Raises:
      ValueError: an unknown ``ife``, ratios not of length 2 or outside [0, 1], widths not five
        positive integers, or a known H or W not divisible by the total stride.

    Example:
      >>> model = unet((64, 64, 3), ife="entropy", widths=(8, 16, 32, 64, 128))
      >>> model.output_shape
      (None, 64, 64, 1)
    """
    check_ife(ife, ratios, 2, name="unet")
    ratios = tuple(float(r) for r in ratios)
    widths = tuple(widths)
    if len(widths) != 5 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"widths must be five positive integers; got {widths!r}.")
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C_in); got {tuple(input_shape)!r}.")
    stride = 2 ** (len(widths) - 1)
    for size in input_shape[:2]:
        if size is not None and size % stride:
            raise ValueError(
                f"unet needs an input height and width divisible by {stride}; got "
                f"{tuple(input_shape[:2])} (pad or resize to a multiple of {stride})."
            )

    if kernel_initializer is None:
        init = _conv_init
    else:
        config = keras.initializers.serialize(keras.initializers.get(kernel_initializer))

        def init():
            return keras.initializers.deserialize(config)

    inputs = keras.Input(tuple(input_shape), name="images")
    skips = []
    x = inputs
    for level, width in enumerate(widths):
        if level:
            x = keras.layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
        x = _double_conv(x, width, f"down{level + 1}", init)
        skips.append(x)

    if ife is not None:
        for level, ratio in zip((1, 2), ratios, strict=True):  # c2 and c3
            if ratio == 0:
                continue
            skips[level] = IFELayer(
                ife,
                ratio=ratio,
                order="raw_first",
                bins=bins,
                entropy_mode=entropy_mode,
                name=f"ife_c{level + 1}",
            )(skips[level])

    x = skips[-1]
    for step, level in enumerate(range(len(widths) - 2, -1, -1), start=1):
        width = widths[level]
        x = keras.layers.Conv2DTranspose(
            width, 2, strides=2, kernel_initializer=init(), name=f"up{step}"
        )(x)
        x = keras.layers.Concatenate(axis=-1, name=f"up{step}_concat")([skips[level], x])
        x = _double_conv(x, width, f"dec{step}", init)
    outputs = keras.layers.Conv2D(num_classes, 1, kernel_initializer=init(), name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def _flax_leaf(tree, path: tuple[str, ...], used: set, collection: str):
    node = tree
    for key in path:
        if not hasattr(node, "keys") or key not in node:
            raise ValueError(
                f"The Flax variables have no {collection}/{'/'.join(path)} for the Keras layer "
                f"{'_'.join(path)!r}; do the two UNets have the same widths and IFE settings?"
            )
        node = node[key]
    used.add((collection, *path))
    return node


def _flax_paths(tree, prefix=()):
    for key, value in tree.items():
        if hasattr(value, "keys"):
            yield from _flax_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


def load_flax_unet_weights(model: keras.Model, variables) -> keras.Model:
    """Copies the variables of a Flax :class:`ife_jax.nn.UNet` into a Keras :func:`unet`, in place.

    Both networks must be built with the same ``widths``, ``num_classes``, input channels and
    IFE ratios; the Keras model then computes the same logits as
    ``flax_model.apply(variables, x, train=False)`` (to float32 rounding). Convolution and
    BatchNorm variables map one to one (Flax ``scale``/``bias``/``mean``/``var`` to Keras
    ``gamma``/``beta``/``moving_mean``/``moving_variance``); the transposed convolutions'
    kernels are flipped in space and their in/out axes swapped, because Keras' transposed
    convolution is the gradient of a convolution while Flax's (``transpose_kernel=False``) is a
    convolution of the dilated input.

    Args:
      model: a Keras UNet from :func:`unet`.
      variables: the Flax variables, ``{"params": ..., "batch_stats": ...}``.

    Returns:
      ``model``, with its weights replaced.

    Raises:
      ValueError: a Keras layer has no Flax counterpart, a shape differs, or Flax variables are
        left over (the message names them).
    """
    import numpy as np

    params = variables["params"]
    stats = variables.get("batch_stats", {})
    used: set = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        path = tuple(layer.name.split("_"))
        if isinstance(layer, keras.layers.BatchNormalization):
            p = _flax_leaf(params, path, used, "params")
            b = _flax_leaf(stats, path, used, "batch_stats")
            for key in ("scale", "bias"):
                used.add(("params", *path, key))
            for key in ("mean", "var"):
                used.add(("batch_stats", *path, key))
            new = [p["scale"], p["bias"], b["mean"], b["var"]]
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            p = _flax_leaf(params, path, used, "params")
            kernel = np.asarray(p["kernel"])[::-1, ::-1].transpose(0, 1, 3, 2)
            new = [kernel, p["bias"]]
            used.update({("params", *path, "kernel"), ("params", *path, "bias")})
        elif isinstance(layer, keras.layers.Conv2D):
            p = _flax_leaf(params, path, used, "params")
            new = [p["kernel"], p["bias"]]
            used.update({("params", *path, "kernel"), ("params", *path, "bias")})
        else:
            raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no Flax mapping.")
        new = [np.asarray(v, dtype=np.float32) for v in new]
        for weight, value in zip(layer.weights, new, strict=True):
            if tuple(weight.shape) != value.shape:
                raise ValueError(
                    f"Shape mismatch for {layer.name}/{weight.name}: Keras {tuple(weight.shape)}, "
                    f"Flax {value.shape}."
                )
        layer.set_weights(new)
    leftover = [
        "/".join(p)
        for collection, tree in (("params", params), ("batch_stats", stats))
        for p in _flax_paths(tree, (collection,))
        if p not in used
    ]
    if leftover:
        raise ValueError(f"Flax variables not used by the Keras model: {', '.join(leftover)}.")
    return model
