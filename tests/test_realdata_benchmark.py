"""benchmarks/realdata.py: the step budget in whole epochs, validation every few epochs."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "realdata.py"
_spec = importlib.util.spec_from_file_location("realdata", _PATH)
realdata = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(realdata)


@pytest.mark.parametrize("train_examples", [29, 57, 65, 200])
def test_budget_is_whole_epochs_of_about_the_requested_steps(train_examples):
    args = realdata.parse_args(["SOURCE", "--steps", "450", "--epoch-steps", "24"])
    config = realdata.structure_config(
        "dmis_folder/x", "/tmp/x", train_examples=train_examples, args=args
    )
    # Hand-worked: steps of 8 slices per epoch (the last partial batch drops), epochs for 450
    # steps, and validation every round(24 / steps per epoch) epochs.
    steps, epochs, every = {29: (3, 150, 8), 57: (7, 65, 3), 65: (8, 57, 3), 200: (25, 18, 1)}[
        train_examples
    ]
    assert (config.epochs, config.eval_every_epochs) == (epochs, every)
    assert (config.epochs - 1) * steps < 450 <= config.epochs * steps
    assert config.checkpoint_every_epochs == every
    # One decay, by 10, at three quarters of the epochs.
    assert config.decay_epochs == (round(0.75 * config.epochs),)
    assert config.decay_factor == 0.1
    assert (config.train_sizes, config.eval_size, config.batch_size) == ((96,), 96, 8)
    assert config.train_split == "train" and config.eval_split == "val"


def test_a_split_smaller_than_a_batch_is_refused_with_its_size():
    args = realdata.parse_args(["SOURCE"])
    with pytest.raises(ValueError, match="5 training slices"):
        realdata.structure_config("dmis_folder/x", "/tmp/x", train_examples=5, args=args)


def test_jobs_is_a_flag():
    assert realdata.parse_args(["SOURCE", "--jobs", "3"]).jobs == 3
