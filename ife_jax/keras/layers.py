"""Keras 3 layers: Instructive Feature Enhancement as one stackable layer."""

from __future__ import annotations

import keras

from ife_jax.keras import ops as keras_ife
from ife_jax.ops import enhance
from ife_jax.ops._checks import (
    CRITERIA,
    ENTROPY_MODES,
    ORDERS,
    check_bins,
    check_choice,
    num_selected,
)
from ife_jax.ops.curvature import CURVATURE_MODES
from ife_jax.ops.entropy import DEFAULT_MEMORY_BUDGET

IMPLEMENTATIONS = ("auto", "jax", "ops")


@keras.saving.register_keras_serializable(package="ife_jax")
class IFELayer(keras.layers.Layer):
    """Instructive Feature Enhancement: ``(B, H, W, C) -> (B, H, W, C + int(ratio * C))``, and
    ``(B, D, H, W, C) -> (B, D, H, W, C + int(ratio * C))`` for volumes (3-D definitions).

    Scores every channel of each sample by curvature or 2-D information entropy, keeps the
    ``k = int(ratio * C)`` best channels (best first, ties to the lower index, non-finite scores
    last) and concatenates them to the raw features. The layer has no weights and behaves the
    same in training and inference; gradients flow through the raw and the selected copies, the
    scores carry none. Inputs are channels-last (NHWC).

    On the JAX backend it calls :func:`ife_jax.enhance` (the one implementation of the math,
    jitted). On the TensorFlow and PyTorch backends it calls :func:`ife_jax.keras.ops.enhance`,
    the same math written in ``keras.ops``. Under a mixed precision policy
    (``"mixed_bfloat16"``) the scores are computed in float32 and the output has the compute
    dtype.

    Args:
      criterion: ``"entropy"`` (the paper's 2-D information entropy) or ``"curvature"``.
      ratio: fraction of channels appended, in (0, 1]; ``int(ratio * C)`` must be >= 1.
      order: ``"raw_first"`` gives ``[x, selected]`` (the reference UNet); ``"selected_first"``
        gives ``[selected, x]`` (the reference DeepLabV3+ and SINetV2).
      bins: entropy quantisation levels per axis (``"paper"``) or histogram bins.
      entropy_mode: ``"paper"``, ``"reference_hist"`` or ``"reference_unique"`` (see
        :func:`ife_jax.entropy_scores`).
      memory_budget_bytes: bound on the paper-mode histogram memory (JAX backend only).
      curvature_mode: for volumes, ``"volume"`` (3x3x3 kernel) or ``"slices"`` (the 2-D
        kernel on every D slice); see :func:`ife_jax.curvature_scores`.
      implementation: ``"auto"`` (JAX functions on the JAX backend, ``keras.ops`` elsewhere),
        ``"jax"`` or ``"ops"`` (force the ``keras.ops`` path, e.g. to compare the two). It is
        saved in the config: keep ``"auto"`` for models that should reload on any backend.
      **kwargs: standard layer arguments (``name``, ``dtype``, ...).

    Raises:
      ValueError: at construction for a bad argument; at build time for an input that is not
        (B, H, W, C) or (B, D, H, W, C) with a known C, with D, H, W >= 3 where known, or
        one that looks channels-first, or a ratio keeping no channel of C.

    Example:
      >>> inputs = keras.Input((32, 32, 64))
      >>> IFELayer("curvature", ratio=0.5)(inputs).shape
      (None, 32, 32, 96)
    """

    def __init__(
        self,
        criterion: str = "entropy",
        ratio: float = 0.5,
        order: str = "raw_first",
        bins: int = 256,
        entropy_mode: str = "paper",
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
        implementation: str = "auto",
        curvature_mode: str = "volume",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.criterion = check_choice(criterion, CRITERIA, name="criterion")
        self.ratio = _check_ratio(ratio)
        self.order = check_choice(order, ORDERS, name="order")
        self.bins = check_bins(bins)
        self.entropy_mode = check_choice(entropy_mode, ENTROPY_MODES, name="entropy_mode")
        if isinstance(memory_budget_bytes, bool) or int(memory_budget_bytes) <= 0:
            raise ValueError(f"memory_budget_bytes must be positive; got {memory_budget_bytes!r}.")
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.implementation = check_choice(implementation, IMPLEMENTATIONS, name="implementation")
        self.curvature_mode = check_choice(curvature_mode, CURVATURE_MODES, name="curvature_mode")
        if implementation == "jax" and keras.backend.backend() != "jax":
            raise ValueError(
                f"implementation='jax' needs the JAX backend; the active Keras backend is "
                f"{keras.backend.backend()!r}. Use 'auto' or 'ops'."
            )

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        self.built = True

    def _check_input_shape(self, input_shape) -> int:
        shape = tuple(input_shape)
        if len(shape) not in (4, 5):
            raise ValueError(
                f"{self.name} expects channels-last (B, H, W, C) features or (B, D, H, W, C) "
                f"volumes; got rank {len(shape)} with shape {shape}."
            )
        if len(shape) == 5 and shape[1] is not None and shape[1] < 3:
            raise ValueError(
                f"{self.name} needs D >= 3 for its 3x3x3 windows; got D={shape[1]} (shape "
                f"{shape}). Is the input channels-first? IFELayer expects (B, D, H, W, C)."
            )
        h, w, c = shape[-3:]
        if c is None:
            raise ValueError(
                f"{self.name} needs a known channel count on the last axis; got shape {shape}. "
                "Is the input channels-first (B, C, H, W)? IFELayer expects (B, H, W, C)."
            )
        if (h is not None and h < 3) or (w is not None and w < 3):
            raise ValueError(
                f"{self.name} needs H >= 3 and W >= 3 for its 3x3 windows; got shape {shape}. "
                "Is the input channels-first (B, C, H, W)? IFELayer expects (B, H, W, C)."
            )
        if len(shape) == 4 and h is not None and w is not None and h <= 4 and w == c and w > 4 * h:
            raise ValueError(
                f"{self.name} got shape {shape}, which looks channels-first (B, C={h}, H={w}, "
                f"W={c}); IFELayer expects channels-last (B, H, W, C). Transpose the input with "
                "keras.layers.Permute((2, 3, 1))."
            )
        return num_selected(c, self.ratio)

    def _enhance_options(self) -> dict:
        """The keyword arguments both enhance implementations take."""
        return dict(
            criterion=self.criterion,
            ratio=self.ratio,
            order=self.order,
            bins=self.bins,
            entropy_mode=self.entropy_mode,
            curvature_mode=self.curvature_mode,
        )

    def call(self, inputs):
        if self.implementation == "ops" or keras.backend.backend() != "jax":
            return keras_ife.enhance(inputs, **self._enhance_options())
        return enhance(
            inputs, memory_budget_bytes=self.memory_budget_bytes, **self._enhance_options()
        )

    def compute_output_shape(self, input_shape):
        k = self._check_input_shape(input_shape)
        *rest, c = tuple(input_shape)
        return (*rest, c + k)

    def get_config(self):
        config = super().get_config()
        config.update(
            self._enhance_options(),
            memory_budget_bytes=self.memory_budget_bytes,
            implementation=self.implementation,
        )
        return config


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool):
        raise ValueError(f"ratio must be a number in (0, 1]; got {ratio!r}.")
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"ratio must be a number in (0, 1]; got {ratio!r}.") from None
    if not 0.0 < r <= 1.0:
        raise ValueError(f"ratio must be in (0, 1]; got {ratio!r}.")
    return r
