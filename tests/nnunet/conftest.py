"""The training-subprocess environment of tests/train/conftest.py, for the nnU-Net runs."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "train_conftest", Path(__file__).parent.parent / "train" / "conftest.py"
)
_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_train)

train_env = _train.train_env
