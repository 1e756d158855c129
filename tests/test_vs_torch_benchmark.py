"""The PyTorch side of benchmarks/vs_torch.py is the reference UNet and the same loss."""

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ife_jax.losses import structure_loss  # noqa: E402

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_torch.py"
_spec = importlib.util.spec_from_file_location("vs_torch", _PATH)
vs_torch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vs_torch)


def test_torch_unet_has_the_reference_parameter_count():
    with torch.device("meta"):
        model = vs_torch.TorchUNet()
    assert vs_torch.parameter_count(model) == 31_043_521


def test_torch_unet_output_shape_small_widths():
    model = vs_torch.TorchUNet((4, 8, 8, 8, 8)).eval()
    assert model(torch.zeros(2, 3, 32, 48)).shape == (2, 1, 32, 48)


def test_torch_structure_loss_matches_ife_jax():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 40, 36, 1)).astype(np.float32) * 3
    m = (rng.random((2, 40, 36, 1)) > 0.6).astype(np.float32)
    want = float(structure_loss(jnp.asarray(z), jnp.asarray(m)))
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    got = float(vs_torch.structure_loss(nchw(z), nchw(m)))
    # Two float32 evaluations of the same formula: each per-image sum of n = 1440 non-negative
    # terms is within n u of exact in any order; the loss combines four such sums (BCE, the
    # 961-term pooling, intersection, union), so the two agree within 4 n u relative.
    np.testing.assert_allclose(got, want, rtol=4 * 1440 * 2.0**-24)
