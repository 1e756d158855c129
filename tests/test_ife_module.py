"""The Flax IFE module."""

import jax
import numpy as np
import pytest

from ife_jax import enhance
from ife_jax.nn import IFE, enhanced_channels
from ife_jax.nn.concat import ChannelConcat


def test_module_equals_function_and_sows_indices():
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 10, 10, 8)))
    module = IFE(criterion="curvature", ratio=0.75, order="selected_first")
    variables = module.init(jax.random.key(1), x)
    assert variables == {}  # parameter-free
    out, state = module.apply(variables, x, mutable=["intermediates"])
    want, idx = enhance(
        x, criterion="curvature", ratio=0.75, order="selected_first", return_indices=True
    )
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(state["intermediates"]["indices"][0], idx)


@pytest.mark.parametrize("order", ["raw_first", "selected_first"])
def test_lazy_output_is_the_same_concatenation_unbuilt(order):
    x = jax.nn.relu(jax.random.normal(jax.random.key(2), (2, 9, 11, 6)))
    module = IFE(criterion="entropy", ratio=0.5, order=order)
    out, state = module.apply({}, x, lazy=True, mutable=["intermediates"])
    want, idx = enhance(x, criterion="entropy", ratio=0.5, order=order, return_indices=True)
    assert isinstance(out, ChannelConcat) and out.shape == want.shape
    np.testing.assert_array_equal(out.materialize(), want)
    np.testing.assert_array_equal(state["intermediates"]["indices"][0], idx)


def test_enhanced_channels():
    assert enhanced_channels(128, 0.5) == 192
    assert enhanced_channels(48, 0.75) == 84
    assert enhanced_channels(32, None) == 32
