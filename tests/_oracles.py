"""Slow, obvious NumPy versions of the IFE scores and of a convolution and its gradients,
written independently of the library."""

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


def curvature_kernel_3d_numpy():
    """The 3x3x3 kernel built as the mean of the 2-D kernel placed in the three planes."""
    k = np.zeros((3, 3, 3))
    k[1, :, :] += KERNEL  # the (H, W) plane through the centre
    k[:, 1, :] += KERNEL  # the (D, W) plane
    k[:, :, 1] += KERNEL  # the (D, H) plane
    return k / 3.0


def curvature_3d_numpy(x):
    """(B, D, H, W, C) -> (B, C): sum |K3 * x| over the valid region, float64, loop over voxels."""
    x = np.asarray(x, np.float64)
    b, d, h, w, c = x.shape
    k = curvature_kernel_3d_numpy()
    out = np.zeros((b, c))
    for z in range(d - 2):
        for y in range(h - 2):
            for xx in range(w - 2):
                window = x[:, z : z + 3, y : y + 3, xx : xx + 3, :]
                out += np.abs(np.einsum("bdhwc,dhw->bc", window, k))
    return out


def neighbour_mean_3d_numpy(v):
    """Mean of the 26 neighbours of each voxel of one (D, H, W) float32 channel, zero padding.

    Voxel by voxel, in float32: three values along W summed left to right, three such sums
    along H, three of those along D, minus the centre, times float32(1/26).
    """
    d, h, w = v.shape
    p = np.pad(np.asarray(v, np.float32), 1)
    inv = np.float32(1.0 / 26.0)
    out = np.zeros_like(v, dtype=np.float32)
    for z in range(d):
        for y in range(h):
            for xx in range(w):
                planes = []
                for dz in range(3):
                    rows = []
                    for dy in range(3):
                        r = p[z + dz, y + dy]
                        rows.append((r[xx] + r[xx + 1]) + r[xx + 2])
                    planes.append((rows[0] + rows[1]) + rows[2])
                total = (planes[0] + planes[1]) + planes[2]
                out[z, y, xx] = (total - np.float32(v[z, y, xx])) * inv
    return out


def _bin_of(v, lo, span, bins):
    """The largest k < bins with k * span <= (v - lo) * bins, both products in float32."""
    t = (np.float32(v) - lo) * np.float32(bins)
    k = 0
    while k + 1 < bins and np.float32(k + 1) * span <= t:
        k += 1
    return k


def paper_entropy_3d_numpy(x, bins=256):
    """The 3-D entropy of every (sample, channel) of (B, D, H, W, C), counting pairs in a dict."""
    x = np.asarray(x, np.float32)
    b, d, h, w, c = x.shape
    out = np.zeros((b, c))
    for bi in range(b):
        for ci in range(c):
            i = x[bi, ..., ci]
            j = neighbour_mean_3d_numpy(i)
            lo = np.float32(min(i.min(), j.min()))
            hi = np.float32(max(i.max(), j.max()))
            span = hi - lo if hi > lo else np.float32(1)
            counts = Counter()
            for vi, vj in zip(i.ravel(), j.ravel(), strict=True):
                counts[_bin_of(vi, lo, span, bins), _bin_of(vj, lo, span, bins)] += 1
            p = np.array(list(counts.values()), np.float64) / (d * h * w)
            out[bi, ci] = -(p * np.log2(p)).sum()
    return out


#: float32 unit roundoff.
U = 2.0**-24


def gamma(n):
    """gamma_n = n u / (1 - n u) (Higham, eq. 3.5): bounds the rounding of a sum of n terms."""
    return n * U / (1 - n * U)


def padded(x, pads):
    return np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))


def reference_conv_grads(x, w, r, pads, dilation):
    """float64 (y, dL/dx, dL/dw) and the sums of |terms| for L = sum(conv(x, w) * r), tap by tap."""
    kh, kw, _, _ = w.shape
    dh, dw = dilation
    xp, w64, r64 = padded(x, pads), np.asarray(w, np.float64), np.asarray(r, np.float64)
    ho, wo = r.shape[1:3]
    y, dxp, dwt = np.zeros(r.shape), np.zeros(xp.shape), np.zeros(w.shape)
    dx_mag, dw_mag = np.zeros(xp.shape), np.zeros(w.shape)
    for p in range(kh):
        for q in range(kw):
            win = (slice(None), slice(dh * p, dh * p + ho), slice(dw * q, dw * q + wo))
            y += xp[win] @ w64[p, q]
            dxp[win] += r64 @ w64[p, q].T
            dx_mag[win] += np.abs(r64) @ np.abs(w64[p, q]).T
            dwt[p, q] = np.einsum("bhwc,bhwo->co", xp[win], r64)
            dw_mag[p, q] = np.einsum("bhwc,bhwo->co", np.abs(xp[win]), np.abs(r64))
    crop = (
        slice(None),
        slice(pads[0][0], pads[0][0] + x.shape[1]),
        slice(pads[1][0], pads[1][0] + x.shape[2]),
    )
    return y, dxp[crop], dx_mag[crop], dwt, dw_mag
