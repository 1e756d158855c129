"""Overlap and volume metrics of one predicted mask against its ground truth.

Every function takes two (H, W) maps: ``pred`` (probabilities in [0, 1], a binary mask, or a
0-255 image) and ``gt`` (binary, or 0/255). Both are binarised by
:func:`ife_jax.metrics._inputs.binarize` (``> 0.5`` on [0, 1], ``> 128`` on 0-255), except in
:func:`mae`, which uses the prediction's probabilities.

Empty masks (the one policy of this package): both empty -> every overlap score is 1 and RVD is
0; exactly one empty -> every overlap score is 0 (Con: its floor, below). Nothing returns NaN.

These metrics are ratios of pixel counts, so pixel spacing cancels out of all of them.
"""

from __future__ import annotations

import numpy as np

from ife_jax.metrics._inputs import as_target, as_unit, binarize, check_same_shape

#: Conformity ``3 - 2/DSC`` diverges as DSC -> 0; DSC is clamped to this value first, so
#: Con >= 3 - 2/0.01 = -197 and stays monotone in DSC.
CON_DSC_FLOOR = 0.01


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    p = binarize(pred, name="pred")
    g = as_target(gt)
    check_same_shape(p, g)
    return p, g


def confusion_counts(pred, gt) -> tuple[int, int, int]:
    """``(|P ∩ G|, |P|, |G|)`` in pixels for two (H, W) maps (binarised as documented)."""
    p, g = _pair(pred, gt)
    return _counts(p, g)


def _counts(p: np.ndarray, g: np.ndarray) -> tuple[int, int, int]:
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g))


def dice_from_counts(tp: int, n_pred: int, n_gt: int) -> float:
    if n_pred + n_gt == 0:
        return 1.0
    return 2.0 * tp / (n_pred + n_gt)


def jaccard_from_counts(tp: int, n_pred: int, n_gt: int) -> float:
    union = n_pred + n_gt - tp
    return 1.0 if union == 0 else tp / union


def conformity_from_dice(d: float) -> float:
    return 3.0 - 2.0 / max(d, CON_DSC_FLOOR)


def fbeta_from_counts(tp: int, n_pred: int, n_gt: int, *, beta2: float) -> float:
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if tp == 0:  # includes exactly one mask empty
        return 0.0
    p, r = tp / n_pred, tp / n_gt
    return (1.0 + beta2) * p * r / (beta2 * p + r)


def rvd_from_counts(n_pred: int, n_gt: int) -> float:
    # An empty ground truth has no volume to be relative to: count it as one pixel.
    return (n_pred - n_gt) / max(n_gt, 1)


def dice(pred, gt) -> float:
    """Dice similarity coefficient ``2|P∩G| / (|P| + |G|)``.

    Args:
      pred: (H, W) prediction (probabilities, binary or 0-255).
      gt: (H, W) ground truth (binary or 0/255).

    Returns:
      DSC in [0, 1]; 1 when both masks are empty, 0 when exactly one is.

    Example:
      Two 10 x 10 squares shifted by 5 columns overlap in 50 pixels: DSC = 100/200 = 0.5.
    """
    return dice_from_counts(*confusion_counts(pred, gt))


def jaccard(pred, gt) -> float:
    """Jaccard index (IoU) ``|P∩G| / |P∪G|``; 1 when both masks are empty."""
    return jaccard_from_counts(*confusion_counts(pred, gt))


def conformity(pred, gt) -> float:
    """Conformity ``(3 DSC - 2) / DSC`` (Chang et al. 2009), with DSC clamped at 0.01.

    The clamp keeps the value finite (>= -197) and monotone in DSC when the masks do not
    overlap; the paper's convention (0 when DSC <= 0.01) is in :func:`ife_jax.metrics.compute_all`.
    """
    return conformity_from_dice(dice(pred, gt))


def f1(pred, gt) -> float:
    """Binary F1 score ``2PR/(P+R)`` (P precision, R recall); equal to DSC on binary masks."""
    return fbeta_from_counts(*confusion_counts(pred, gt), beta2=1.0)


def fbeta(pred, gt, *, beta2: float = 0.3) -> float:
    """F-beta ``(1+β²)PR / (β²P + R)`` with β² = 0.3 by default (the saliency convention).

    Args:
      pred, gt: (H, W) maps, binarised as documented in this module.
      beta2: β², > 0.

    Returns:
      F-beta in [0, 1]: 1 when both masks are empty, 0 when they do not overlap.
    """
    if not beta2 > 0:
        raise ValueError(f"beta2 must be > 0, got {beta2}.")
    return fbeta_from_counts(*confusion_counts(pred, gt), beta2=beta2)


def mae(pred, gt) -> float:
    """Mean absolute error ``mean |p - g|`` of the prediction's probabilities in [0, 1].

    ``pred`` keeps its soft values (0-255 maps are divided by 255); ``gt`` is binarised.
    """
    p, _ = as_unit(pred, name="pred")
    g = as_target(gt)
    check_same_shape(p, g)
    return float(np.mean(np.abs(p - g)))


def rvd(pred, gt) -> float:
    """Signed relative volume difference ``(|P| - |G|) / |G|``.

    Negative means under-segmentation. Both masks empty gives 0; an empty ground truth with a
    non-empty prediction gives ``|P|`` (the volume is taken relative to one pixel).
    """
    _, n_pred, n_gt = confusion_counts(pred, gt)
    return rvd_from_counts(n_pred, n_gt)


def rvd_abs_percent(pred, gt) -> float:
    """``100 |(|P| - |G|) / |G||``, the unsigned percent form of :func:`rvd`."""
    return 100.0 * abs(rvd(pred, gt))
