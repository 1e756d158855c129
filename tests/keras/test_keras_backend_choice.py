"""A ``~/.keras/keras.json`` that selects an uninstalled backend: the README's snippet still runs
on JAX, and importing ``ife_jax.keras`` without a choice says how to make one."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None,
    reason="needs a machine without TensorFlow (keras.json then names a missing backend)",
)


def _run(code: str, keras_home: Path) -> subprocess.CompletedProcess:
    (keras_home / "keras.json").write_text(json.dumps({"backend": "tensorflow"}))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(KERAS_HOME=str(keras_home), PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


def test_readme_keras_snippet_imports_keras_on_jax_when_keras_json_selects_tensorflow(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Keras 3") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    imports = snippet.split("\nmodel = ")[0]  # the set-up lines; building the UNet is slow
    assert "from ife_jax.keras import" in imports
    out = _run(imports + "\nprint(keras.backend.backend())\n", tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "jax"


def test_importing_ife_jax_keras_with_a_missing_backend_says_how_to_choose_jax(tmp_path):
    out = _run("import ife_jax.keras", tmp_path)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: Keras is set to the 'tensorflow' backend")
    assert "tensorflow is not installed" in last
    assert "os.environ['KERAS_BACKEND'] = 'jax'" in last
