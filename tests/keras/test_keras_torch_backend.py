"""Runs the IFELayer (2-D and 3-D), loss and metric tests again with ``KERAS_BACKEND=torch``.

Keras reads its backend once per process, so the run happens in a subprocess. It needs a Python
with PyTorch (and this package's dependencies): the current interpreter if it can import torch,
or the one named by ``IFE_JAX_TORCH_PYTHON``. Otherwise the test is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TORCH_PYTHON = os.environ.get("IFE_JAX_TORCH_PYTHON") or (
    sys.executable if importlib.util.find_spec("torch") is not None else None
)
SUITES = [
    "tests/keras/test_keras_ife_layer.py",
    "tests/keras/test_keras_ife_layer_3d.py",
    "tests/keras/test_keras_losses.py",
]


@pytest.mark.skipif(TORCH_PYTHON is None, reason="PyTorch is not installed")
def test_layer_loss_and_metric_tests_pass_on_the_torch_backend():
    env = dict(os.environ, KERAS_BACKEND="torch")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [
            TORCH_PYTHON,
            "-m",
            "pytest",
            "-q",
            "-o",
            "addopts=",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
        ]
        + SUITES,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and " failed" not in summary, summary
