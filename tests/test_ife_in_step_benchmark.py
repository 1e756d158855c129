"""benchmarks/ife_in_step.py: its stand-ins for IFE compute what they claim, replace the real
IFE only inside their context, and its table splits the variant's extra time."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ife_jax.nn import IFE
from ife_jax.ops import enhance

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "ife_in_step.py"
_spec = importlib.util.spec_from_file_location("ife_in_step", _PATH)
ife_in_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ife_in_step)


@pytest.mark.parametrize("order", ["raw_first", "selected_first"])
@pytest.mark.parametrize("kind", ["widened", "selected"])
def test_stand_ins_append_the_first_channels(kind, order):
    x = jax.random.normal(jax.random.key(0), (2, 6, 7, 8))
    out, idx = ife_in_step.ablated_enhance(kind)(x, ratio=0.5, order=order, return_indices=True)
    first = np.asarray(x)[..., :4]
    want = np.concatenate([x, first] if order == "raw_first" else [first, x], axis=-1)
    np.testing.assert_array_equal(np.asarray(out), want)
    np.testing.assert_array_equal(np.asarray(idx), [[0, 1, 2, 3]] * 2)
    # The real IFE keeps other channels here, so a stand-in that fell back to it would show.
    real = enhance(x, criterion="curvature", ratio=0.5, order=order)
    assert real.shape == out.shape and not np.array_equal(np.asarray(real), want)


def _lowered_ife(criterion):
    x = jnp.ones((1, 8, 8, 4))
    module = IFE(criterion=criterion, ratio=0.5)
    return jax.jit(lambda x: module.apply({}, x)).lower(x).as_text()


def test_ablation_replaces_ife_inside_its_context_only():
    full = _lowered_ife("entropy")
    assert "scatter" in full and "sort" in full  # the histogram and the top-k
    with ife_in_step.ablation("selected"):
        selected = _lowered_ife("entropy")
    with ife_in_step.ablation("widened"):
        widened = _lowered_ife("entropy")
    assert "scatter" not in selected and "sort" in selected
    assert "scatter" not in widened and "sort" not in widened
    with ife_in_step.ablation("full"):
        assert _lowered_ife("entropy") == full
    assert _lowered_ife("entropy") == full  # restored


def test_split_takes_the_median_of_per_round_differences():
    prepared = {("UNet", "plain"): {"flops": 100.0}, ("UNet+C", "widened"): {"flops": 105.0}}
    # Round 2 is slow for every step alike; round 3 slows the plain step alone.
    times = {
        ("UNet", "plain"): [1.0, 2.0, 1.5],
        ("UNet+C", "widened"): [1.1, 2.1, 1.1],
        ("UNet+C", "selected"): [1.15, 2.15, 1.15],
        ("UNet+C", "full"): [1.3, 2.3, 1.3],
    }
    (row,) = ife_in_step.split(["UNet+C"], prepared, times)
    assert row["widening"] == pytest.approx(0.1)  # rounds: 0.1, 0.1, -0.4
    assert row["selection"] == pytest.approx(0.05) and row["scoring"] == pytest.approx(0.15)
    assert row["total"] == pytest.approx(0.3) and row["extra_flops"] == pytest.approx(0.05)
    assert row["plain"] == 1.5 and row["full"] == 1.3  # medians of the steps themselves


def test_main_times_a_tiny_unet(capsys):
    rows = ife_in_step.main(
        ["--models", "UNet+C", "--size", "32", "--widths", "4,8,8,8,8", "--runs", "1",
         "--warmup", "0"]
    )  # fmt: skip
    (row,) = rows
    assert all(row[k] > 0 for k in ife_in_step.KINDS)
    assert 0 < row["extra_flops"] < 1
    assert "widening" in capsys.readouterr().out


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="'UNet' is not an IFE variant"):
        ife_in_step.prepare_all(["UNet"], None, None)
