"""benchmarks/realdata.py: the step budget, the epochs of several passes and their loader."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "realdata.py"
_spec = importlib.util.spec_from_file_location("realdata", _PATH)
realdata = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(realdata)


def test_passes_repeat_the_source_in_order():
    source = ["a", "b", "c"]
    passes = realdata.Passes(source, 3)
    assert len(passes) == 9
    assert [passes[i] for i in range(9)] == source * 3
    with pytest.raises(IndexError):
        passes[9]


@pytest.mark.parametrize("train_examples", [29, 57, 65, 200])
def test_budget_is_whole_epochs_of_about_the_requested_steps(train_examples):
    args = realdata.parse_args(["SOURCE", "--steps", "450", "--epoch-steps", "24"])
    passes = realdata.passes_per_epoch(train_examples, args)
    # Hand-worked: the nearest whole number of passes to 24 steps of 8 slices.
    assert passes == {29: 7, 57: 3, 65: 3, 200: 1}[train_examples]
    config = realdata.structure_config(
        "dmis_folder/x", "/tmp/x", train_examples=train_examples, args=args
    )
    steps_per_epoch = passes * train_examples // 8
    assert (config.epochs - 1) * steps_per_epoch < 450 <= config.epochs * steps_per_epoch
    # One decay, by 10, at three quarters of the epochs.
    assert config.decay_epochs == (round(0.75 * config.epochs),)
    assert config.decay_factor == 0.1
    assert (config.train_sizes, config.eval_size, config.batch_size) == ((96,), 96, 8)


def test_the_loader_of_an_epoch_of_passes_has_the_counted_steps():
    from ife_jax.train.datasets import GrainTrainInput

    args = realdata.parse_args(["SOURCE"])
    config = realdata.structure_config("dmis_folder/x", "/tmp/x", train_examples=29, args=args)
    records = [{"image": None, "mask": None}] * 29
    loader = GrainTrainInput(realdata.Passes(records, 7), config)
    assert loader.steps_per_epoch == 7 * 29 // 8


def test_a_split_smaller_than_a_batch_is_refused_with_its_size():
    args = realdata.parse_args(["SOURCE"])
    with pytest.raises(ValueError, match="5 training slices"):
        realdata.passes_per_epoch(5, args)
