"""Slow, obvious NumPy versions of the IFE scores, written independently of the library."""

from collections import Counter

import numpy as np

KERNEL = np.array([[-1, 5, -1], [5, -16, 5], [-1, 5, -1]], np.float64) / 16.0


def curvature_numpy(x):
    """(B, H, W, C) -> (B, C): sum |K * x| over the valid region, in float64, loop over windows."""
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    out = np.zeros((b, c))
    for y in range(h - 2):
        for xx in range(w - 2):
            window = x[:, y : y + 3, xx : xx + 3, :]
            out += np.abs(np.einsum("bhwc,hw->bc", window, KERNEL))
    return out


def neighbour_mean_numpy(ch):
    """Mean of the 8 neighbours of each pixel of one (H, W) float32 channel, zero padding.

    The nine window values are summed in raster order in float32, like the library.
    """
    h, w = ch.shape
    p = np.pad(ch, 1)
    s = np.zeros_like(ch)
    for dy in range(3):
        for dx in range(3):
            s = s + p[dy : dy + h, dx : dx + w]
    return (s - ch) / np.float32(8)


def paper_entropy_numpy(x, bins=256):
    """The paper's 2-D entropy of every (sample, channel), counting (i, j) pairs in a dict."""
    x = np.asarray(x, np.float32)
    b, h, w, c = x.shape
    out = np.zeros((b, c))
    for bi in range(b):
        for ci in range(c):
            i = x[bi, :, :, ci]
            j = neighbour_mean_numpy(i)
            lo = np.float32(min(i.min(), j.min()))
            hi = np.float32(max(i.max(), j.max()))
            span = hi - lo if hi > lo else np.float32(1)
            # Bin k holds (v - lo) * bins in [k * span, (k + 1) * span), products in float32.
            edges = np.arange(bins + 1, dtype=np.float32) * span
            qi = np.searchsorted(edges, (i - lo) * np.float32(bins), side="right") - 1
            qj = np.searchsorted(edges, (j - lo) * np.float32(bins), side="right") - 1
            qi, qj = np.clip(qi, 0, bins - 1), np.clip(qj, 0, bins - 1)
            counts = Counter(zip(qi.ravel().tolist(), qj.ravel().tolist(), strict=True))
            p = np.array(list(counts.values()), np.float64) / (h * w)
            out[bi, ci] = -(p * np.log2(p)).sum()
    return out
