"""Curvature scores against a NumPy oracle and hand-worked cases."""

import jax.numpy as jnp
import numpy as np
import pytest
from _oracles import curvature_numpy

from ife_jax.ops import CURVATURE_KERNEL, curvature_scores


def test_kernel_is_the_papers():
    a, b, g = -1 / 16, 5 / 16, -1
    np.testing.assert_array_equal(CURVATURE_KERNEL, np.float32([[a, b, a], [b, g, b], [a, b, a]]))
    assert abs(CURVATURE_KERNEL.sum()) < 1e-7


@pytest.mark.parametrize("shape", [(2, 9, 13, 5), (1, 3, 3, 1), (3, 4, 11, 2), (1, 17, 6, 7)])
@pytest.mark.parametrize("method", ["conv", "rows", "auto"])
def test_matches_numpy(shape, method):
    x = np.random.default_rng(len(shape) + sum(shape)).standard_normal(shape).astype(np.float32)
    got = np.asarray(curvature_scores(jnp.asarray(x), method=method))
    np.testing.assert_allclose(got, curvature_numpy(x), rtol=2e-5, atol=1e-5)


def test_flat_and_ramp_channels_score_zero_and_a_point_scores_its_kernel():
    h, w = 9, 10
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    point = np.zeros((h, w), np.float32)
    point[4, 5] = 1.0  # interior: every kernel tap sees it once
    x = np.stack([np.full((h, w), 3.0, np.float32), 0.5 * xx - 2 * yy, point], -1)[None]
    s = np.asarray(curvature_scores(jnp.asarray(x)))[0]
    np.testing.assert_allclose(s[:2], 0.0, atol=1e-4)
    np.testing.assert_allclose(s[2], np.abs(CURVATURE_KERNEL).sum(), rtol=1e-6)
