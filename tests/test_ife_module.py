"""The Flax IFE module."""

from functools import partial

import jax
import numpy as np
import pytest

from ife_jax import enhance
from ife_jax.nn import IFE, UNet, enhanced_channels
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


def test_recorded_outputs_are_built_arrays():
    """capture_intermediates and tabulate record the (B, H, W, C + k) array, not the lazy form,
    and a filter that leaves IFE out records nothing of it. Inside a UNet, which calls it
    lazily."""
    model = UNet(widths=(4, 8, 8, 8, 8), ife="entropy")
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 1))
    variables = jax.jit(partial(model.init, train=False))(jax.random.key(4), x)

    def capture(filter_fn):
        apply = partial(model.apply, train=False, capture_intermediates=filter_fn)
        return jax.jit(partial(apply, mutable=["intermediates"]))(variables, x)[1]["intermediates"]

    inter = capture(True)
    for level, skip in (("c2", "down2"), ("c3", "down3")):
        out = inter[f"ife_{level}"]["__call__"][0]
        assert isinstance(out, jax.Array)
        raw = inter[skip]["__call__"][0]
        np.testing.assert_array_equal(out, enhance(raw, criterion="entropy", ratio=0.5))

    def only_convs(module, method):
        return method == "__call__" and not isinstance(module, IFE)

    assert "__call__" not in capture(only_convs)["ife_c2"]

    table = model.tabulate(
        jax.random.key(4),
        x,
        train=False,
        console_kwargs={"width": 400, "no_color": True, "force_terminal": False},
    )
    row = next(line for line in table.splitlines() if "ife_c2" in line)
    assert "float32[2,16,16,12]" in row and "arrays" not in row


def test_enhanced_channels():
    assert enhanced_channels(128, 0.5) == 192
    assert enhanced_channels(48, 0.75) == 84
    assert enhanced_channels(32, None) == 32
