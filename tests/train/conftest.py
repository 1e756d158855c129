"""Shared by the training tests: the environment of the training subprocesses.

Every subprocess uses the session's persistent compilation cache (``programs_folder`` of
``tests/conftest.py``, shared by the xdist workers and the tests themselves), so a
train step compiled by one run is loaded by the next; XLA:CPU compiles without LLVM's
optimisations, which the tests, comparing runs with each other, do not need.
"""

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


@pytest.fixture(scope="session")
def train_env(programs_folder):
    """``train_env(**extra)`` -> the environment dict of a training subprocess."""

    def env(device_count: int = 1, **extra):
        out = dict(os.environ)
        out["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), out.get("PYTHONPATH", "")])
        out["JAX_PLATFORMS"] = "cpu"
        out["JAX_COMPILATION_CACHE_DIR"] = str(programs_folder)
        out["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        out["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
        flags = ["--xla_backend_optimization_level=0"]
        if device_count > 1:
            flags.append(f"--xla_force_host_platform_device_count={device_count}")
        out["XLA_FLAGS"] = " ".join(flags)
        out.update(extra)
        return out

    return env
