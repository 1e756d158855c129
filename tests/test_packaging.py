"""The install is light: ``import ife_jax`` loads only the core dependencies, and a subpackage
whose extra is missing says which extra to install. Each check runs in a fresh interpreter, so
that what this test session has already imported does not count."""

import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Packages of the extras (pyproject.toml); none may be imported by the core API.
OPTIONAL = (
    "keras",
    "tensorflow",
    "tensorflow_datasets",
    "grain",
    "cv2",
    "PIL",
    "orbax",
    "matplotlib",
    "tqdm",
    "scipy",
    "skimage",
    "nibabel",
    "torch",
)


def _run(code: str) -> dict:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_import_loads_no_optional_package():
    loaded = _run(
        "import json, sys\n"
        "import numpy as np\n"
        "import ife_jax\n"
        "from ife_jax import enhance\n"
        "enhance(np.ones((1, 4, 4, 2), np.float32), criterion='entropy', ratio=0.5)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    assert "ife_jax" in loaded and "jax" in loaded
    assert sorted(set(loaded) & set(OPTIONAL)) == []


def test_train_step_and_its_benchmark_need_no_data_or_keras_extra():
    # A GPU machine may have jax, flax and optax but neither grain nor OpenCV: the train step
    # (config, network, state, step) and benchmarks/train.py's device-only path must run there.
    blocked = ("grain", "cv2", "tensorflow_datasets", "keras", "PIL", "tqdm", "matplotlib")
    loaded = _run(
        "import argparse, json, sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # `import name` fails as if not installed\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import train\n"
        "from ife_jax.train.sharding import make_mesh\n"
        "args = argparse.Namespace(size=32, batch_size=2, precision='float32', runs=1,\n"
        "                          warmup=0, widths=[4, 8, 8, 8, 8], device_only=True)\n"
        "row = train.bench('UNet+E', args, make_mesh())\n"
        "assert row['step_s'] > 0\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules if sys.modules[m])))\n"
    )
    assert "ife_jax" in loaded and "optax" in loaded
    assert sorted(set(loaded) & set(OPTIONAL)) == []


def test_missing_extra_names_the_extra():
    cases = [
        ("cv2", "ife_jax.data", "data"),
        ("grain", "ife_jax.data", "data"),
        ("skimage", "ife_jax.metrics", "train"),
        ("keras", "ife_jax.keras", "keras"),
        ("tensorflow_datasets", "tfds_cosmos", "data"),
        ("orbax", "ife_jax.train.checkpointing", "train"),
    ]
    messages = _run(
        "import importlib, json, sys\n"
        f"cases = {cases!r}\n"
        "out = []\n"
        "for blocked, module, _ in cases:\n"
        "    saved = sys.modules.get(blocked)\n"
        "    sys.modules[blocked] = None  # makes `import blocked` fail as if not installed\n"
        "    try:\n"
        "        importlib.import_module(module)\n"
        "        out.append(None)\n"
        "    except ImportError as err:\n"
        "        out.append([type(err).__name__, str(err)])\n"
        "    finally:\n"
        "        del sys.modules[blocked]\n"
        "        if saved is not None:\n"
        "            sys.modules[blocked] = saved\n"
        "print(json.dumps(out))\n"
    )
    for (blocked, module, extra), got in zip(cases, messages, strict=True):
        assert got is not None, f"importing {module} without {blocked} did not fail"
        kind, message = got
        assert kind == "ImportError", (module, message)
        assert f"pip install 'ife-jax[{extra}]'" in message and repr(blocked) in message
        assert "\n" not in message


def test_version_comes_from_the_package_metadata():
    import ife_jax

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert ife_jax.__version__ == metadata.version("ife-jax") == declared
