"""Instructive Feature Enhancement: score, select and concatenate."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ife_jax.ops._checks import CRITERIA, ORDERS, check_bins, check_choice, check_features
from ife_jax.ops.curvature import curvature_scores
from ife_jax.ops.entropy import DEFAULT_MEMORY_BUDGET, entropy_scores
from ife_jax.ops.selection import select_channels


def channel_scores(
    x: jax.Array,
    *,
    criterion: str = "entropy",
    bins: int = 256,
    entropy_mode: str = "paper",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    curvature_mode: str = "volume",
) -> jax.Array:
    """(B, C) float32 scores of ``x`` by ``criterion`` (``"entropy"`` or ``"curvature"``)."""
    check_choice(criterion, CRITERIA, name="criterion")
    if criterion == "curvature":
        return curvature_scores(x, mode=curvature_mode)
    return entropy_scores(x, bins=bins, mode=entropy_mode, memory_budget_bytes=memory_budget_bytes)


@functools.partial(
    jax.jit,
    static_argnames=(
        "criterion",
        "ratio",
        "order",
        "return_indices",
        "bins",
        "entropy_mode",
        "memory_budget_bytes",
        "curvature_mode",
    ),
)
def enhance(
    x: jax.Array,
    *,
    criterion: str = "entropy",
    ratio: float = 0.5,
    order: str = "raw_first",
    return_indices: bool = False,
    bins: int = 256,
    entropy_mode: str = "paper",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    curvature_mode: str = "volume",
):
    r"""Instructive Feature Enhancement: :math:`F = [F_x, \mathrm{top}_k(S(F_x))]`.

    Scores every channel of each sample by ``criterion``, keeps the ``k = int(ratio * C)``
    highest-scoring channels (best first, ties to the lower index, non-finite scores last) and
    concatenates them to the raw features along the channel axis.

    Args:
      x: (B, H, W, C) features, NHWC, or (B, D, H, W, C) volumes, NDHWC, any real dtype;
        D, H, W >= 3. Volumes are scored with the 3-D definitions (see
        :func:`curvature_scores` and :func:`entropy_scores`).
      criterion: ``"entropy"`` (2-D information entropy) or ``"curvature"``.
      ratio: fraction of channels to append, in (0, 1].
      order: ``"raw_first"`` gives ``[x, selected]`` (the reference UNet);
        ``"selected_first"`` gives ``[selected, x]`` (the reference DeepLabV3+ and SINetV2).
      return_indices: also return the (B, k) int32 indices of the selected channels.
      bins, entropy_mode, memory_budget_bytes: passed to :func:`entropy_scores`.
      curvature_mode: passed to :func:`curvature_scores` as ``mode`` (``"volume"`` or
        ``"slices"``; volumes only).

    Returns:
      (B, H, W, C + k) (or (B, D, H, W, C + k)) array in ``x``'s dtype, and the indices if
      ``return_indices``.
      Gradients reach ``x`` through both the raw and the selected copies; the scores carry none.

    Raises:
      ValueError: for any bad argument (the message names it), at trace time.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (2, 32, 32, 16))
      >>> enhance(x, criterion="curvature", ratio=0.5).shape
      (2, 32, 32, 24)

    Reference: Liu et al., "Instructive Feature Enhancement for Dichotomous Medical Image
    Segmentation", MICCAI 2023.
    """
    check_features(x)
    check_choice(order, ORDERS, name="order")
    check_bins(bins)
    scores = channel_scores(
        x,
        criterion=criterion,
        bins=bins,
        entropy_mode=entropy_mode,
        memory_budget_bytes=memory_budget_bytes,
        curvature_mode=curvature_mode,
    )
    selected, indices = select_channels(x, scores, ratio=ratio)
    parts = (x, selected) if order == "raw_first" else (selected, x)
    out = jnp.concatenate(parts, axis=-1)
    return (out, indices) if return_indices else out
