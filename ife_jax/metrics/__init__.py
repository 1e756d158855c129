"""The nine DMIS metrics (Con, DSC, JC, F1, HCE, MAE, HD, ASD, RVD), per image, on host arrays.

:func:`compute_all` returns all nine for one image under one of two conventions:
``"standard"`` (the textbook definitions, the default) or ``"paper"`` (the conventions of the
IFE paper's published evaluation code, so numbers can be set beside its tables). "Paper" is
those conventions, not a bit-for-bit replay of that code: the departures listed at the end
(MAE and HCE above all) mean this convention does not reproduce the published MAE and HCE
columns exactly. The single metrics
live in :mod:`.overlap`, :mod:`.surface` and :mod:`.hce`; the evaluation report (CSV, tables,
paired t-test, figures) in :mod:`.report`.

Inputs (one rule for every function here, :mod:`._inputs`): ``pred`` is a (H, W) bool mask, an
integer map (0/1, or 0-255 when its maximum exceeds 1) or a float map: a float map within
[0, 1] up to rounding (``PROB_TOLERANCE``, 7.6e-6; so 1.0000001 is a probability) is a
probability map, one with larger values is on the 0-255 scale. ``gt`` must be binary: bool, or
values all in {0, 1} or all in {0, 255}; any other ground truth (``{0, 2}``, anti-aliased grey)
raises a ``ValueError`` listing its values instead of being guessed at.

=======  ========================================  =========================================
key      ``convention="standard"``                 ``convention="paper"``
=======  ========================================  =========================================
binar.   pred ``> 0.5`` (``> 128`` on 0-255);      pred min-max normalised per image,
         gt likewise                               ``(p - min)/(max - min + 1e-8) >= 0.5``
                                                   (a constant map -> empty); gt ``> 0``
``dsc``  ``2|P∩G|/(|P|+|G|)``                      same; both empty -> 0
``jc``   ``|P∩G|/|P∪G|``                           same; both empty -> 0
``con``  ``3 - 2/max(DSC, 0.01)`` (finite,         ``(3 DSC - 2)/DSC``, but 0 when
         >= -197, monotone in DSC)                 DSC <= 0.01
``f1``   binary F1 ``2PR/(P+R)`` (= DSC)           F-beta ``1.3 P R/(0.3 P + R + 1e-4)``;
                                                   P = 0 if P empty, R = 0 if G empty
``mae``  ``mean |p - g|`` on the probabilities     ``mean |b - g|`` on the binarised
         p in [0, 1]                               prediction b (fraction of wrong pixels)
``hd``   Hausdorff distance between boundaries     same; 0 when either mask is empty
``asd``  ASSD, pooled over both boundaries:        ASSD as the mean of the directed means,
         ``(Σ d(∂P,∂G) + Σ d(∂G,∂P))``             ``(mean d(∂P,∂G) + mean d(∂G,∂P)) / 2``;
         ``/ (|∂P| + |∂G|)``                       0 when either mask is empty
``rvd``  signed ``(|P| - |G|)/|G|``                ``100 |(|P|/|G|) - 1|``
``hce``  DIS HCE (relax 5, epsilon 2) at full      DIS HCE after resizing both binary masks
         resolution                                (0/255) bilinearly to 64 x 64; foreground
                                                   ``> 0``, skeleton from ``> 128``
=======  ========================================  =========================================

Distances are in ``spacing`` units under both conventions (the reference used pixels: leave
``spacing=1``). Con, DSC, JC, F1 and MAE are fractions here; the paper's tables show them x100
(:func:`ife_jax.metrics.report.format_table` does that).

Empty masks. Standard: both empty -> DSC, JC, F1, Con = 1, HD, ASD, RVD, HCE, MAE = 0; exactly
one empty -> DSC, JC, F1 = 0, Con = -197, HD = ASD = the image diagonal
``sqrt((H*sy)^2 + (W*sx)^2)``, RVD = -1 for an empty prediction and ``|P|`` for an empty ground
truth (relative to one pixel). Paper: every key is 0 when both are empty; with one empty,
DSC = JC = F1 = Con = HD = ASD = 0 and RVD = 100 (empty prediction) or ``100 |P|`` (empty
ground truth). :func:`empty_case` names the case of an image; the report counts them.

Where ``"paper"`` departs from the reference's code, on purpose:

- MAE: the reference subtracts two uint8 0/255 images, where a false positive gives
  255 - 0 = 255 but a false negative 0 - 255, which wraps to 1; its MAE is therefore
  ``(255 FP + FN) / (255 H W)``, while here it is ``(FP + FN) / (H W)``. On images dominated by
  false negatives the reference's value is up to 255 times smaller (about 100 times on typical
  Cosmos55k errors).
- JC with both masks empty and RVD with an empty ground truth raise in the reference (division
  by zero); here they are 0 and ``100 |P|``. HD and ASD on empty masks are 0, as the reference's
  exception handler returns (its code on current NumPy returns 0 for every image, a defect not
  reproduced).
- HCE: the reference subtracts uint8 0/255 images after resizing, so soft-edge pixels become
  both TP and FP/FN (wrap-around); here the resized masks are binarised once (non-zero) and the
  DIS definition is applied cleanly. On random masks the two agree on about 95% of cases and
  differ by up to 3 clicks on the rest.
- Min-max normalisation and the 0.5 threshold apply to the map given here. The reference's
  UNet and SINetV2 test scripts also crop the square padding off first and then min-max
  normalise, as ``ife-jax evaluate`` does (it scores each map at the image's original size,
  the padding cropped off); the reference's DeepLabV3+ test script never crops,
  so its DeepLabV3+ numbers include the padding.
- F-beta keeps the reference's ``+ 1e-4`` in the denominator (F = 0.99992 for a perfect mask).
"""

from __future__ import annotations

import numpy as np

from ife_jax._extras import missing_extra

try:
    import cv2  # noqa: F401
    import matplotlib  # noqa: F401
    import scipy  # noqa: F401
    import skimage  # noqa: F401
    import tqdm  # noqa: F401
except ModuleNotFoundError as err:
    raise missing_extra(err, "train") from None

from ife_jax.metrics._inputs import (
    EMPTY_CASES,
    PROB_TOLERANCE,
    as_target,
    as_unit,
    binarize,
    check_same_shape,
    image_diagonal,
    normalize_spacing,
)
from ife_jax.metrics._inputs import empty_case as _empty_case
from ife_jax.metrics.hce import PAPER_HCE_SIZE, hce, hce_parts
from ife_jax.metrics.overlap import (
    CON_DSC_FLOOR,
    conformity,
    conformity_from_dice,
    dice,
    dice_from_counts,
    f1,
    fbeta,
    fbeta_from_counts,
    jaccard,
    jaccard_from_counts,
    mae,
    rvd,
    rvd_abs_percent,
    rvd_from_counts,
)
from ife_jax.metrics.surface import (
    asd,
    assd,
    assd_from,
    boundary,
    directed_distances,
    hausdorff,
    hausdorff95,
    hausdorff_from,
)

#: Keys of :func:`compute_all`, in the paper's column order.
METRIC_KEYS = ("con", "dsc", "jc", "f1", "hce", "mae", "hd", "asd", "rvd")
CONVENTIONS = ("standard", "paper")


def binarize_prediction(pred, *, convention: str = "standard") -> np.ndarray:
    """The binary prediction each convention evaluates: (H, W) map -> (H, W) bool."""
    _check_convention(convention)
    if convention == "standard":
        return binarize(pred, name="pred")
    u, _ = as_unit(pred, name="pred")
    lo, hi = u.min(), u.max()
    return (u - lo) / (hi - lo + 1e-8) >= 0.5


def binarize_target(gt, *, convention: str = "standard") -> np.ndarray:
    """The binary ground truth each convention evaluates: (H, W) map -> (H, W) bool."""
    _check_convention(convention)
    return as_target(gt)


def empty_case(pred, gt, *, convention: str = "standard") -> str:
    """Which masks are empty after binarisation: ``"none"``, ``"both"``, ``"pred"`` or ``"gt"``."""
    p = binarize_prediction(pred, convention=convention)
    g = binarize_target(gt, convention=convention)
    check_same_shape(p, g)
    return _empty_case(p, g)


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")


def compute_all(pred, gt, *, convention: str = "standard", spacing=1.0) -> dict[str, float]:
    """All nine metrics of one image, under the chosen convention (table in the module doc).

    Args:
      pred: (H, W) probability map in [0, 1], binary mask, or 0-255 image (rule above).
      gt: (H, W) binary ground truth: bool, {0, 1} or {0, 255}.
      convention: ``"standard"`` or ``"paper"``.
      spacing: pixel size, a number or (row, col) pair; distances (``hd``, ``asd``) are in
        its units.

    Returns:
      ``{"con", "dsc", "jc", "f1", "hce", "mae", "hd", "asd", "rvd"}`` -> float (``hce`` is a
      whole number). Never NaN.

    Example:
      >>> import numpy as np
      >>> g = np.zeros((32, 32), bool); g[8:18, 8:18] = True
      >>> p = np.roll(g, 5, axis=1)
      >>> compute_all(p, g)["dsc"]
      0.5
    """
    _check_convention(convention)
    sp = normalize_spacing(spacing)
    p = binarize_prediction(pred, convention=convention)
    g = binarize_target(gt, convention=convention)
    check_same_shape(p, g)
    case = _empty_case(p, g)
    tp = int(np.count_nonzero(p & g))
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    dists = directed_distances(p, g, sp) if case == "none" else None

    if convention == "standard":
        d = dice_from_counts(tp, n_p, n_g)
        if dists is not None:
            hd, sd = hausdorff_from(*dists), assd_from(*dists)
        else:
            hd = sd = 0.0 if case == "both" else image_diagonal(p.shape, sp)
        out = {
            "con": conformity_from_dice(d),
            "dsc": d,
            "jc": jaccard_from_counts(tp, n_p, n_g),
            "f1": fbeta_from_counts(tp, n_p, n_g, beta2=1.0),
            "hce": float(sum(hce_parts(p, g))),
            "mae": float(np.mean(np.abs(as_unit(pred, name="pred")[0] - g))),
            "hd": hd,
            "asd": sd,
            "rvd": rvd_from_counts(n_p, n_g),
        }
    else:
        d = 2.0 * tp / (n_p + n_g) if n_p + n_g else 0.0
        union = n_p + n_g - tp
        prec = tp / n_p if n_p else 0.0
        rec = tp / n_g if n_g else 0.0
        if dists is not None:
            hd = hausdorff_from(*dists)
            sd = 0.5 * (float(dists[0].mean()) + float(dists[1].mean()))
        else:
            hd = sd = 0.0
        out = {
            "con": (3.0 * d - 2.0) / d if d > 0.01 else 0.0,
            "dsc": d,
            "jc": tp / union if union else 0.0,
            "f1": 1.3 * prec * rec / (0.3 * prec + rec + 1e-4),
            "hce": float(hce(p, g, size=PAPER_HCE_SIZE)),
            "mae": float(np.mean(p != g)),
            "hd": hd,
            "asd": sd,
            "rvd": 100.0 * abs(rvd_from_counts(n_p, n_g)),
        }
    return {k: float(out[k]) for k in METRIC_KEYS}


__all__ = [
    "CONVENTIONS",
    "CON_DSC_FLOOR",
    "EMPTY_CASES",
    "METRIC_KEYS",
    "PAPER_HCE_SIZE",
    "PROB_TOLERANCE",
    "asd",
    "assd",
    "binarize_prediction",
    "binarize_target",
    "boundary",
    "compute_all",
    "conformity",
    "dice",
    "directed_distances",
    "empty_case",
    "f1",
    "fbeta",
    "hausdorff",
    "hausdorff95",
    "hce",
    "hce_parts",
    "jaccard",
    "mae",
    "rvd",
    "rvd_abs_percent",
]
