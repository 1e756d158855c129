"""The parameter-free Flax (Linen) module that applies IFE inside a network."""

from __future__ import annotations

import flax.linen as nn
import jax
from flax.linen import module as linen_module

from ife_jax.nn.concat import ChannelConcat
from ife_jax.ops import enhance, num_selected
from ife_jax.ops.entropy import DEFAULT_MEMORY_BUDGET


def enhanced_channels(channels: int, ratio: float | None) -> int:
    """Channels after IFE: C + int(ratio * C), or C when ``ratio`` is None (no IFE)."""
    return channels if ratio is None else channels + num_selected(channels, ratio)


def _output_recorded(module: nn.Module) -> bool:
    """Whether Flax records what ``module.__call__`` returns: ``capture_intermediates`` with a
    filter that takes it, or the call records of ``tabulate``. Flax keeps both in its module
    context; if a Flax release moves them, this says False (the output is then left lazy) and
    the tests that capture IFE outputs fail."""
    context = getattr(linen_module, "_context", None)
    captures = getattr(context, "capture_stack", None)
    if captures and captures[-1] and captures[-1](module, "__call__"):
        return True
    return bool(getattr(context, "call_info_stack", None))


class IFE(nn.Module):
    """Instructive Feature Enhancement as a Flax module: ``(B, H, W, C) -> (B, H, W, C + k)``,
    or ``(B, D, H, W, C) -> (B, D, H, W, C + k)`` for volumes.

    It has no parameters and behaves the same in training and evaluation. The selected
    channel indices are sown into the ``"intermediates"`` collection as ``"indices"`` so that
    interpretability tools can read which channels were chosen
    (``model.apply(..., mutable=["intermediates"])``). UNet, DeepLabV3+ and nnU-Net call it
    with ``lazy=True``. Where Flax records the output (``capture_intermediates``,
    ``tabulate``), the call returns the built array all the same, so the records hold the
    ``(B, H, W, C + k)`` array; the next convolution then reads it built, which changes its
    outputs by float rounding at most.

    Attributes:
      criterion: ``"entropy"`` or ``"curvature"``.
      ratio: fraction of channels appended, in (0, 1].
      order: ``"raw_first"`` (UNet) or ``"selected_first"`` (DeepLabV3+, SINetV2).
      bins, entropy_mode, memory_budget_bytes: see :func:`ife_jax.entropy_scores`.
      curvature_mode: ``"volume"`` or ``"slices"`` for volumes; see
        :func:`ife_jax.curvature_scores`.
    """

    criterion: str = "entropy"
    ratio: float = 0.5
    order: str = "raw_first"
    bins: int = 256
    entropy_mode: str = "paper"
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    curvature_mode: str = "volume"

    @nn.compact
    def __call__(self, x: jax.Array, lazy: bool = False) -> jax.Array | ChannelConcat:
        """``[x, selected]`` (or ``[selected, x]``); with ``lazy``, the same concatenation as
        a :class:`~ife_jax.nn.concat.ChannelConcat`, which a following
        :class:`~ife_jax.nn.conv.Conv` reads without building the copies (see
        :func:`~ife_jax.nn.conv.concat_conv`)."""
        out, indices = enhance(
            x,
            criterion=self.criterion,
            ratio=self.ratio,
            order=self.order,
            return_indices=True,
            bins=self.bins,
            entropy_mode=self.entropy_mode,
            memory_budget_bytes=self.memory_budget_bytes,
            curvature_mode=self.curvature_mode,
        )
        self.sow("intermediates", "indices", indices)
        if lazy and not _output_recorded(self):  # the built one is left unused: XLA drops it
            return ChannelConcat.with_copies(x, indices, raw_first=self.order == "raw_first")
        return out
