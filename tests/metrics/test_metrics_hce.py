"""Human correction effort on cases with a known number of corrections."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from ife_jax.metrics import hce, hce_parts


def canvas(h=100, w=100):
    return np.zeros((h, w), bool)


def with_box(m, r0, r1, c0, c1, value=True):
    m = m.copy()
    m[r0:r1, c0:c1] = value
    return m


def blobby(seed, shape=(96, 96)):
    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.standard_normal(shape), 4) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_masks_cost_nothing(seed):
    g = blobby(seed)
    assert g.any()
    assert hce(g, g) == 0
    assert hce(g, g, size=64) == 0


def test_both_empty():
    assert hce(canvas(), canvas()) == 0
    assert hce_parts(canvas(), canvas()) == (0, 0, 0, 0)


def test_isolated_false_blobs_cost_one_click_each():
    g = with_box(canvas(), 10, 40, 10, 40)
    one = with_box(g, 60, 80, 60, 80)  # 20 x 20, far from the object
    assert hce_parts(one, g) == (0, 1, 0, 0)
    two = with_box(one, 60, 80, 10, 30)
    assert hce(two, g) == 2


def test_blobs_thinner_than_the_relaxation_are_free():
    g = with_box(canvas(), 10, 40, 10, 40)
    small = with_box(g, 70, 75, 70, 75)  # 5 x 5 < 2 * relax + 1
    assert hce(small, g) == 0
    assert hce(small, g, relax=1) == 1


def test_a_hole_costs_one_click():
    g = with_box(canvas(), 20, 80, 20, 80)
    p = with_box(g, 40, 60, 40, 60, value=False)  # 20 x 20 hole well inside the object
    assert hce_parts(p, g) == (0, 0, 0, 1)


def test_false_positive_along_a_straight_edge_needs_two_vertices():
    # A 40 x 20 false-positive strip glued to the object's right side: the only boundary to
    # redraw is the straight 40-pixel seam, a polyline of 2 vertices.
    g = with_box(canvas(), 20, 60, 20, 60)
    p = with_box(g, 20, 60, 60, 80)
    assert hce_parts(p, g) == (2, 0, 0, 0)


def test_missed_thin_line_is_kept_by_the_skeleton():
    # The object plus a 1-pixel line far away; the prediction misses the line. Relaxation
    # would forgive a 1-pixel-wide miss, the skeleton keeps it: one straight polyline.
    g = with_box(canvas(), 10, 40, 10, 40)
    g = with_box(g, 70, 71, 20, 80)
    p = with_box(canvas(), 10, 40, 10, 40)
    assert hce_parts(p, g) == (0, 0, 2, 0)


def test_missed_object_costs_more_than_a_hole():
    g = with_box(canvas(), 20, 80, 20, 80)
    assert hce(canvas(), g) > hce(with_box(g, 40, 60, 40, 60, value=False), g)


def test_paper_size_resizes_first():
    # 128 x 128 -> 64 x 64 halves every object: a 20 x 20 false blob becomes 10 x 10, within
    # the relaxation; a 40 x 40 one stays a click.
    g = with_box(canvas(128, 128), 10, 40, 10, 40)
    p20 = with_box(g, 80, 100, 80, 100)
    p40 = with_box(g, 70, 110, 70, 110)
    assert hce(p20, g) == 1 and hce(p20, g, size=64) == 0
    assert hce(p40, g) == 1 and hce(p40, g, size=64) == 1


def test_crop_does_not_change_counts():
    g = blobby(5, (60, 60))
    p = blobby(6, (60, 60))
    big_g = np.zeros((200, 220), bool)
    big_p = np.zeros((200, 220), bool)
    big_g[70:130, 90:150] = g
    big_p[70:130, 90:150] = p
    # the original touches the image border, so embed both copies away from it
    mid_g = np.zeros((100, 100), bool)
    mid_p = np.zeros((100, 100), bool)
    mid_g[20:80, 20:80] = g
    mid_p[20:80, 20:80] = p
    assert hce_parts(big_p, big_g) == hce_parts(mid_p, mid_g)


def test_input_scales_and_bad_arguments():
    g = with_box(canvas(), 10, 40, 10, 40)
    p = with_box(g, 60, 80, 60, 80)
    assert hce(p.astype(np.uint8) * 255, g.astype(np.float32)) == hce(p, g)
    assert hce(p * 0.9, g) == hce(p, g)
    with pytest.raises(ValueError, match="relax"):
        hce(p, g, relax=-1)
    with pytest.raises(ValueError, match="epsilon"):
        hce(p, g, epsilon=-1.0)
    with pytest.raises(ValueError, match="size"):
        hce(p, g, size=0)
