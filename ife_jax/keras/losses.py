"""The training loss and the training-time Dice as Keras objects.

On the JAX backend both call the pure functions of :mod:`ife_jax.losses`, so that a Keras model
and the Flax training loop optimise and report exactly the same numbers. On the TensorFlow and
PyTorch backends they compute the same formulas with ``keras.ops`` (tested equal on JAX).
"""

from __future__ import annotations

import functools

import keras
from keras import ops

from ife_jax import losses as jax_losses

BOUNDARY_WINDOW = jax_losses.BOUNDARY_WINDOW


@functools.cache
def _jax_structure_loss_per_image(weighted_bce: bool):
    """``structure_loss`` of each image on its own, jitted and vmapped over the batch."""
    import jax

    def one(z, m):
        return jax_losses.structure_loss(z[None], m[None], weighted_bce=weighted_bce)

    return jax.jit(jax.vmap(one))


@functools.cache
def _jax_dice_per_image():
    import jax

    return jax.jit(jax_losses.dice_per_image, static_argnames=("threshold",))


def _use_jax(implementation: str) -> bool:
    return implementation != "ops" and keras.backend.backend() == "jax"


def _check_implementation(implementation: str) -> str:
    if implementation not in ("auto", "ops"):
        raise ValueError(f"implementation must be 'auto' or 'ops'; got {implementation!r}.")
    return implementation


def _check_shapes(logits, masks) -> None:
    if tuple(logits.shape) != tuple(masks.shape):
        raise ValueError(
            f"y_pred {tuple(logits.shape)} and y_true {tuple(masks.shape)} must have the same "
            "(B, H, W, 1) shape."
        )


def boundary_weights(masks):
    """``1 + 5 |avgpool31(m) - m|`` in ``keras.ops``, as :func:`ife_jax.losses.boundary_weights`.

    The pooling divides by the full 31x31 window (zero padding counted).
    """
    m = ops.cast(masks, "float32")
    p = BOUNDARY_WINDOW // 2
    padded = ops.pad(m, [[0, 0], [p, p], [p, p], [0, 0]])
    pooled = ops.average_pool(padded, BOUNDARY_WINDOW, strides=1, padding="valid")
    return 1.0 + 5.0 * ops.abs(pooled - m)


def structure_loss_per_image(logits, masks, *, weighted_bce: bool = False, implementation="auto"):
    """The structure loss (BCE + weighted IoU) of every image: (B, H, W, 1) x 2 -> (B,) float32.

    Its mean over the batch is :func:`ife_jax.losses.structure_loss`. On the JAX backend each
    image's value is that function applied to the image alone.
    """
    _check_shapes(logits, masks)
    if _use_jax(implementation):
        return _jax_structure_loss_per_image(bool(weighted_bce))(logits, masks)
    z = ops.cast(logits, "float32")
    m = ops.cast(masks, "float32")
    w = boundary_weights(m)
    bce = ops.maximum(z, 0.0) - z * m + ops.log1p(ops.exp(-ops.abs(z)))
    axes = (1, 2, 3)
    if weighted_bce:
        bce = ops.sum(w * bce, axes) / ops.sum(w, axes)
    else:
        bce = ops.mean(bce, axes)
    p = ops.sigmoid(z)
    inter = ops.sum(p * m * w, axes)
    union = ops.sum((p + m) * w, axes)
    return bce + 1.0 - (inter + 1.0) / (union - inter + 1.0)


def dice_per_image(logits, masks, *, threshold: float = 0.5, implementation="auto"):
    """Hard Dice per image, as :func:`ife_jax.losses.dice_per_image`: (B,) float32.

    ``sigmoid(logits) >= threshold`` against ``masks > 0.5``; both empty scores 1, exactly one
    empty scores 0.
    """
    _check_shapes(logits, masks)
    if _use_jax(implementation):
        return _jax_dice_per_image()(logits, masks, threshold=float(threshold))
    pred = ops.sigmoid(ops.cast(logits, "float32")) >= threshold
    gt = ops.cast(masks, "float32") > 0.5
    axes = tuple(range(1, len(logits.shape)))
    inter = ops.sum(ops.cast(ops.logical_and(pred, gt), "float32"), axes)
    total = ops.sum(ops.cast(pred, "float32"), axes) + ops.sum(ops.cast(gt, "float32"), axes)
    return ops.where(total > 0, 2.0 * inter / ops.maximum(total, 1.0), 1.0)


@keras.saving.register_keras_serializable(package="ife_jax")
class StructureLoss(keras.losses.Loss):
    r"""The F3Net structure loss the reference trains with: BCE + weighted IoU, from logits.

    .. math::
      w = 1 + 5|\mathrm{avgpool}_{31}(m) - m|,\quad
      L = \mathrm{BCE}(z, m) + 1 - \frac{\sum w\,\sigma(z)\,m + 1}
          {\sum w\,(\sigma(z) + m) - \sum w\,\sigma(z)\,m + 1}

    Sums run per image; with the default reduction the loss is the mean over the batch, equal to
    :func:`ife_jax.losses.structure_loss` (the function the Flax training uses).

    Args:
      weighted_bce: weight the BCE term by ``w`` as well (the reference's intent; its code
        averages the BCE unweighted).
      implementation: ``"auto"`` (the JAX function on the JAX backend, ``keras.ops``
        elsewhere) or ``"ops"``.
      reduction, name, dtype: as :class:`keras.losses.Loss`.

    Call ``loss(y_true, y_pred)`` with (B, H, W, 1) masks in [0, 1] and (B, H, W, 1) logits.

    Example:
      >>> model.compile(optimizer="adam", loss=StructureLoss(), metrics=[Dice()])
    """

    def __init__(
        self,
        weighted_bce: bool = False,
        implementation: str = "auto",
        reduction="sum_over_batch_size",
        name="structure_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.weighted_bce = bool(weighted_bce)
        self.implementation = _check_implementation(implementation)

    def call(self, y_true, y_pred):
        return structure_loss_per_image(
            y_pred, y_true, weighted_bce=self.weighted_bce, implementation=self.implementation
        )

    def get_config(self):
        config = super().get_config()
        config.update(weighted_bce=self.weighted_bce, implementation=self.implementation)
        return config


@keras.saving.register_keras_serializable(package="ife_jax")
class Dice(keras.metrics.Metric):
    """Mean hard Dice per image of ``sigmoid(y_pred) >= threshold`` against ``y_true > 0.5``.

    The per-image values are :func:`ife_jax.losses.dice_per_image` (both masks empty scores 1,
    exactly one empty scores 0); the metric averages them over every image seen (weighted by
    ``sample_weight`` when given).

    Args:
      threshold: probability threshold on ``sigmoid(y_pred)``.
      implementation: ``"auto"`` or ``"ops"`` (see :class:`StructureLoss`).
      name, dtype: as :class:`keras.metrics.Metric`.

    ``update_state(y_true, y_pred)`` takes (B, H, W, 1) masks and (B, H, W, 1) logits.
    """

    def __init__(
        self, threshold: float = 0.5, implementation: str = "auto", name="dice", dtype=None
    ):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.implementation = _check_implementation(implementation)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        d = dice_per_image(
            y_pred, y_true, threshold=self.threshold, implementation=self.implementation
        )
        if sample_weight is None:
            weight = ops.ones_like(d)
        else:
            weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            weight = ops.broadcast_to(weight, ops.shape(d))
        self.total.assign_add(ops.sum(d * weight))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1e-12), 0.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold, implementation=self.implementation)
        return config
