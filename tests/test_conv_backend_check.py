"""benchmarks/conv_backend_check.py on CPU: it passes with the custom CPU gradients of
``ife_jax.nn.conv`` and fails when every convolution keeps XLA's own gradients."""

import importlib.util
from pathlib import Path

import ife_jax.nn.conv as conv

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "conv_backend_check.py"
_spec = importlib.util.spec_from_file_location("conv_backend_check", _PATH)
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def test_passes_with_the_custom_cpu_gradients(capsys):
    assert check.main() == 0
    assert "XLA convolutions in the compiled UNet gradient" in capsys.readouterr().out


def test_fails_when_the_kernel_gradients_are_xla_own(monkeypatch, capsys):
    monkeypatch.setattr(conv, "_custom_grad_pays", lambda *args: False)
    assert check.main() == 1
    assert "FAIL" in capsys.readouterr().out
