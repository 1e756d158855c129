"""Human correction effort (HCE): the DIS metric of Qin et al., "Highly Accurate Dichotomous
Image Segmentation", ECCV 2022.

HCE estimates how many mouse clicks a person needs to turn the prediction into the ground truth:
polygon vertices along the parts of the error boundaries that must be redrawn, plus one click per
error region that can be removed or filled as a whole.

The definition, step by step (P prediction, G ground truth, both binary; TP = P ∩ G,
FP = P \\ G, FN = G \\ P; "dilate" and "erode" use the 3 x 3 cross):

1. *Relaxation* (``relax`` = 5). Erode P ∪ G ``relax`` times. The false positives inside the
   eroded union are seeds; dilate them ``relax`` times, each time keeping only pixels outside
   TP ∪ FN, and intersect with FP: FP' are the false positives that are not a thin band along
   a correct boundary. FN' likewise (seeds in FN, growth outside TP ∪ FP).
2. *Skeleton preservation*. Add to FN' the pixels of G's skeleton not covered by TP, so a
   missed thin structure always costs effort.
3. *Boundaries to redraw*. Trace the contours of FP' (and of FN') with OpenCV (all contours,
   no chain compression). A contour pixel needs redrawing when it touches (3 x 3 cross) the
   *condition* set: TP ∪ FN' for FP', the background outside TP ∪ FP' ∪ FN' for FN'. Each
   pixel is used once (first contour, first position wins). Each contour is cut into runs of
   such pixels; when a contour has several runs and the first pixel of its first run is an
   8-neighbour of the last pixel of its last run, the first run, reversed, is appended to the
   last run. Each run is simplified by Ramer-Douglas-Peucker (``cv2.approxPolyDP``, open
   curve, ``epsilon`` = 2.0) and its vertices are counted.
4. *Independent regions*. Each 8-connected region of FP' (of FN') none of whose contour pixels
   needed redrawing costs one click.

HCE = vertices(FP') + regions(FP') + vertices(FN') + regions(FN').

This module implements that definition from its description, vectorised; it reproduces the
published counts, including the reversal in the run-joining rule of step 3. Masks are cropped
to the bounding box of P ∪ G plus ``relax + 2`` pixels first, which changes no count.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.morphology import skeletonize

from ife_jax.metrics._inputs import as_target, bbox, binarize, check_same_shape

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))

#: Side of the square the paper's evaluation resizes both masks to before HCE.
PAPER_HCE_SIZE = 64


def _u8(mask: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(mask, dtype=np.uint8)


def _relaxed(
    err: np.ndarray, seeds_mask: np.ndarray, blocked: np.ndarray, relax: int
) -> np.ndarray:
    """Pixels of ``err`` reached from ``err ∩ seeds_mask`` in ``relax`` steps off ``blocked``."""
    grown = err & seeds_mask
    free = ~blocked
    for _ in range(relax):
        grown = (cv2.dilate(_u8(grown), _CROSS) > 0) & free
    return err & grown


def _effort(region: np.ndarray, cond: np.ndarray, epsilon: float) -> tuple[int, int]:
    """(polygon vertices, independent regions) of one relaxed error mask (step 3 and 4)."""
    reg8 = _u8(region)
    contours, _ = cv2.findContours(reg8, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    if len(contours) == 0:
        return 0, 0
    w = region.shape[1]
    near = (cv2.dilate(_u8(cond), _CROSS) > 0).ravel()
    lengths = np.array([len(c) for c in contours])
    pts = np.concatenate(contours).reshape(-1, 2)  # (x, y), contour after contour
    lin = pts[:, 1].astype(np.int64) * w + pts[:, 0]
    ok = np.flatnonzero(near[lin])
    _, first = np.unique(lin[ok], return_index=True)  # each pixel used once, first wins
    used = np.zeros(len(pts), dtype=bool)
    used[ok[first]] = True

    n_regions, labels = cv2.connectedComponents(reg8, connectivity=8)
    touched = np.unique(labels.ravel()[lin[used]])
    independent = (n_regions - 1) - touched.size

    vertices = 0
    ends = np.cumsum(lengths)
    starts = ends - lengths
    for s, e in zip(starts, ends, strict=True):
        u = used[s:e]
        if not u.any():
            continue
        # Runs of consecutive used positions: [run_start, run_end).
        edges = np.diff(np.concatenate(([0], u.view(np.int8), [0])))
        r0 = np.flatnonzero(edges == 1)
        r1 = np.flatnonzero(edges == -1)
        c = pts[s:e]
        runs = [c[a:b] for a, b in zip(r0, r1, strict=True)]
        if len(runs) > 1:
            fx, fy = runs[0][0]
            lx, ly = runs[-1][-1]
            if max(abs(int(fx) - int(lx)), abs(int(fy) - int(ly))) == 1:
                runs[-1] = np.concatenate([runs[-1], runs[0][::-1]])
                runs = runs[1:]
        for run in runs:
            curve = np.ascontiguousarray(run, dtype=np.int32).reshape(-1, 1, 2)
            vertices += len(cv2.approxPolyDP(curve, epsilon, False))
    return vertices, independent


def hce_parts(
    pred_bin: np.ndarray,
    gt_bin: np.ndarray,
    *,
    relax: int = 5,
    epsilon: float = 2.0,
    skeleton: np.ndarray | None = None,
) -> tuple[int, int, int, int]:
    """The four HCE terms of two boolean masks.

    Args:
      pred_bin, gt_bin: (H, W) bool.
      relax: relaxation steps (>= 0).
      epsilon: RDP tolerance in pixels (>= 0).
      skeleton: (H, W) bool skeleton of the ground truth; default ``skeletonize(gt_bin)``.

    Returns:
      ``(fp_vertices, fp_regions, fn_vertices, fn_regions)``; HCE is their sum.
    """
    if relax < 0 or int(relax) != relax:
        raise ValueError(f"relax must be a non-negative integer, got {relax}.")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}.")
    check_same_shape(pred_bin, gt_bin)
    union = pred_bin | gt_bin
    box = bbox(union, int(relax) + 2)
    if box is None:
        return 0, 0, 0, 0
    p, g, union = pred_bin[box], gt_bin[box], union[box]
    tp = p & g
    fp = p & ~g
    fn = g & ~p
    if skeleton is not None:
        ske = np.asarray(skeleton, dtype=bool)[box]
    elif fn.any():
        ske = skeletonize(g)
    else:  # the skeleton lies in G = TP: it adds nothing
        ske = np.zeros_like(g)
    core = cv2.erode(_u8(union), _CROSS, iterations=int(relax)) > 0
    fp_r = _relaxed(fp, core, tp | fn, int(relax))
    fn_r = _relaxed(fn, core, tp | fp, int(relax)) | (ske & ~tp)

    fp_v, fp_i = _effort(fp_r, tp | fn_r, epsilon)
    fn_v, fn_i = _effort(fn_r, ~(tp | fp_r | fn_r), epsilon)
    return fp_v, fp_i, fn_v, fn_i


def _resized_nonzero(mask: np.ndarray, size: int) -> np.ndarray:
    """0/255 image of ``mask`` resized bilinearly to size x size (uint8)."""
    img = _u8(mask) * np.uint8(255)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


def hce(pred, gt, *, relax: int = 5, epsilon: float = 2.0, size: int | None = None) -> int:
    """Human correction effort of a prediction (DIS, Qin et al. 2022). Lower is better.

    Args:
      pred: (H, W) prediction: probabilities in [0, 1] (binarised ``> 0.5``), binary, or a 0-255
        image (binarised ``> 128``, the DIS rule).
      gt: (H, W) ground truth, binary or 0/255, binarised the same way.
      relax: relaxation steps (DIS: 5).
      epsilon: polygon simplification tolerance in pixels (DIS: 2.0).
      size: if given, the paper's evaluation: both binary masks, as 0/255 images, are resized
        bilinearly to ``size x size``; every non-zero pixel then counts as foreground, and the
        ground-truth skeleton is taken from the resized mask ``> 128``.

    Returns:
      The number of clicks (int >= 0); 0 when the masks agree, and when both are empty.

    Example:
      A prediction equal to the ground truth plus one isolated 20 x 20 blob has HCE 1; plus a
      5 x 5 blob (thinner than the relaxation) HCE 0.
    """
    p = binarize(pred, name="pred")
    g = as_target(gt)
    check_same_shape(p, g)
    if size is None:
        return int(sum(hce_parts(p, g, relax=relax, epsilon=epsilon)))
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}.")
    p8 = _resized_nonzero(p, size)
    g8 = _resized_nonzero(g, size)
    ske = skeletonize(g8 > 128)
    return int(sum(hce_parts(p8 > 0, g8 > 0, relax=relax, epsilon=epsilon, skeleton=ske)))


__all__ = ["PAPER_HCE_SIZE", "hce", "hce_parts"]
