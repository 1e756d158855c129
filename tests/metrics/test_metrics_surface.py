"""Boundary distances: hand-worked geometry, a brute-force all-pairs oracle, spacing, empties."""

import math

import numpy as np
import pytest

from ife_jax.metrics import asd, assd, boundary, hausdorff, hausdorff95


def square(shape=(32, 32), top=8, left=8, side=10):
    m = np.zeros(shape, bool)
    m[top : top + side, left : left + side] = True
    return m


def slow_boundary(m):
    """Foreground pixels with a 4-neighbour in the background or outside the image."""
    h, w = m.shape
    out = np.zeros_like(m)
    for r in range(h):
        for c in range(w):
            if m[r, c]:
                for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    rr, cc = r + dr, c + dc
                    if not (0 <= rr < h and 0 <= cc < w) or not m[rr, cc]:
                        out[r, c] = True
    return out


def oracle(p, g, spacing, boundary=slow_boundary):
    """Directed distance sets by all pairs of boundary pixels (of ``boundary``)."""
    s = np.asarray(spacing, float)
    bp = np.argwhere(boundary(p)) * s
    bg = np.argwhere(boundary(g)) * s
    d = np.sqrt(((bp[:, None, :] - bg[None, :, :]) ** 2).sum(-1))
    return d.min(axis=1), d.min(axis=0)


@pytest.mark.parametrize("shift", [1, 3, 5, 9])
def test_shifted_squares_hausdorff_equals_shift(shift):
    g = square()
    p = square(left=8 + shift)
    assert hausdorff(p, g) == pytest.approx(shift)
    assert hausdorff(g, p) == pytest.approx(shift)


def test_concentric_squares_all_distances():
    a = square(top=5, left=5, side=10)  # boundary: 36 pixels, each 2 from b's
    b = square(top=3, left=3, side=14)  # boundary: 40 at 2, 8 at sqrt 5, 4 corners at sqrt 8
    r5, r8 = math.sqrt(5), math.sqrt(8)
    assert hausdorff(a, b) == pytest.approx(r8, rel=1e-6)
    assert asd(a, b) == pytest.approx(2.0, rel=1e-6)
    assert asd(b, a) == pytest.approx((80 + 8 * r5 + 4 * r8) / 52, rel=1e-6)
    assert assd(a, b) == pytest.approx((72 + 80 + 8 * r5 + 4 * r8) / 88, rel=1e-6)
    assert hausdorff95(a, b) == pytest.approx(r8, rel=1e-6)  # max of directed 95th percentiles
    assert hausdorff95(a, b, pooled=True) == pytest.approx(r5, rel=1e-6)  # one pooled percentile


def test_one_pixel_objects():
    p = np.zeros((10, 10), bool)
    g = np.zeros((10, 10), bool)
    p[2, 3] = True
    g[7, 7] = True
    for fn in (hausdorff, hausdorff95, assd, asd):
        assert fn(p, g) == pytest.approx(math.sqrt(41), rel=1e-6)
    assert hausdorff(p, p) == 0.0 and assd(p, p) == 0.0


def test_objects_touching_the_image_border():
    g = np.zeros((10, 10), bool)
    g[:, :5] = True  # the image edge is part of the boundary
    p = np.zeros((10, 10), bool)
    p[:, :3] = True
    assert hausdorff(p, g) == pytest.approx(2.0)
    assert asd(p, g) == pytest.approx(14 / 22)
    assert asd(g, p) == pytest.approx(22 / 26)
    assert assd(p, g) == pytest.approx(36 / 48)
    np.testing.assert_array_equal(boundary(g), slow_boundary(g))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 2.0), (0.7, 1.9), (3.0, 0.5)])
def test_brute_force_oracle_on_random_masks(spacing):
    rng = np.random.default_rng(int(10 * spacing[0] + spacing[1]))
    for _ in range(12):
        h, w = rng.integers(3, 24, size=2)
        p = rng.random((h, w)) < rng.uniform(0.05, 0.6)
        g = rng.random((h, w)) < rng.uniform(0.05, 0.6)
        p[rng.integers(h), rng.integers(w)] = True
        g[rng.integers(h), rng.integers(w)] = True
        np.testing.assert_array_equal(boundary(p), slow_boundary(p))
        d_pg, d_gp = oracle(p, g, spacing)
        tol = {"rel": 1e-6, "abs": 1e-6}
        assert hausdorff(p, g, spacing=spacing) == pytest.approx(max(d_pg.max(), d_gp.max()), **tol)
        assert asd(p, g, spacing=spacing) == pytest.approx(d_pg.mean(), **tol)
        assert asd(g, p, spacing=spacing) == pytest.approx(d_gp.mean(), **tol)
        pooled = np.concatenate([d_pg, d_gp])
        assert assd(p, g, spacing=spacing) == pytest.approx(pooled.mean(), **tol)
        assert hausdorff95(p, g, spacing=spacing) == pytest.approx(
            max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)), **tol
        )
        assert hausdorff95(p, g, spacing=spacing, pooled=True) == pytest.approx(
            np.percentile(pooled, 95), **tol
        )


def test_anisotropic_shift():
    g = square()
    p = square(left=11)  # shifted 3 columns
    assert hausdorff(p, g, spacing=(2.0, 0.5)) == pytest.approx(1.5)
    assert hausdorff(p, g, spacing=(0.5, 2.0)) == pytest.approx(6.0)
    assert assd(p, g, spacing=2.0) == pytest.approx(2 * assd(p, g))


@pytest.mark.parametrize("spacing", [1.0, (2.0, 0.5)])
def test_empty_mask_policy(spacing):
    full = square(shape=(30, 40))
    empty = np.zeros_like(full)
    sy, sx = (spacing, spacing) if np.isscalar(spacing) else spacing
    diag = math.hypot(30 * sy, 40 * sx)
    for fn in (hausdorff, hausdorff95, assd, asd):
        assert fn(empty, empty, spacing=spacing) == 0.0
        assert fn(empty, full, spacing=spacing) == pytest.approx(diag)
        assert fn(full, empty, spacing=spacing) == pytest.approx(diag)


def test_bad_spacing_and_percentile():
    g = square()
    with pytest.raises(ValueError, match="spacing"):
        hausdorff(g, g, spacing=0.0)
    with pytest.raises(ValueError, match="spacing"):
        hausdorff(g, g, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="percentile"):
        hausdorff95(g, g, percentile=101)


# ----------------------------------------------------------------------------- volumes


def slow_boundary_3d(m):
    """Foreground voxels with a 6-neighbour in the background or outside the volume."""
    out = np.zeros_like(m)
    steps = [
        s
        for a in range(3)
        for s in (tuple(np.eye(3, dtype=int)[a]), tuple(-np.eye(3, dtype=int)[a]))
    ]
    for idx in zip(*np.nonzero(m), strict=True):
        for step in steps:
            n = tuple(i + d for i, d in zip(idx, step, strict=True))
            if not all(0 <= v < s for v, s in zip(n, m.shape, strict=True)) or not m[n]:
                out[idx] = True
    return out


def oracle_3d(p, g, spacing):
    return oracle(p, g, spacing, slow_boundary_3d)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8), (0.5, 2.0, 1.3)])
def test_brute_force_oracle_on_random_volumes(spacing):
    rng = np.random.default_rng(int(10 * spacing[0] + spacing[2]))
    for _ in range(6):
        shape = tuple(int(n) for n in rng.integers(2, 9, size=3))
        p = rng.random(shape) < rng.uniform(0.05, 0.6)
        g = rng.random(shape) < rng.uniform(0.05, 0.6)
        p[tuple(rng.integers(n) for n in shape)] = True
        g[tuple(rng.integers(n) for n in shape)] = True
        np.testing.assert_array_equal(boundary(p), slow_boundary_3d(p))
        d_pg, d_gp = oracle_3d(p, g, spacing)
        tol = {"rel": 1e-9, "abs": 1e-9}  # both sides float64 sums of three squares
        assert hausdorff(p, g, spacing=spacing) == pytest.approx(max(d_pg.max(), d_gp.max()), **tol)
        assert asd(p, g, spacing=spacing) == pytest.approx(d_pg.mean(), **tol)
        pooled = np.concatenate([d_pg, d_gp])
        assert assd(p, g, spacing=spacing) == pytest.approx(pooled.mean(), **tol)
        assert hausdorff95(p, g, spacing=spacing) == pytest.approx(
            max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)), **tol
        )


def test_volume_shifted_along_the_slice_axis_by_hand():
    g = np.zeros((12, 10, 10), bool)
    g[2:6, 3:7, 3:7] = True
    p = np.roll(g, 2, axis=0)  # two slices further
    # every boundary voxel has a partner 2 slices away at most; the caps are exactly 2 away.
    assert hausdorff(p, g, spacing=(5.0, 0.8, 0.8)) == pytest.approx(10.0)
    assert hausdorff(p, g, spacing=(0.5, 0.8, 0.8)) == pytest.approx(1.0)


def test_volume_empty_masks_and_bad_spacing():
    full = np.zeros((4, 5, 6), bool)
    full[1:3, 1:4, 2:5] = True
    empty = np.zeros_like(full)
    diag = math.sqrt((4 * 3.0) ** 2 + (5 * 0.5) ** 2 + (6 * 0.5) ** 2)
    for fn in (hausdorff, hausdorff95, assd, asd):
        assert fn(empty, empty, spacing=(3.0, 0.5, 0.5)) == 0.0
        assert fn(empty, full, spacing=(3.0, 0.5, 0.5)) == pytest.approx(diag)
    with pytest.raises(ValueError, match="3 values"):
        hausdorff(full, full, spacing=(1.0, 2.0))
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        hausdorff(full[None], full[None])
