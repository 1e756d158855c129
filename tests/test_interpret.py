"""Interpretability helpers."""

import flax.linen as nn
import jax
import matplotlib
import numpy as np
import pytest

from ife_jax import channel_scores, curvature_scores
from ife_jax.interpret import (
    collect_indices,
    plot_channel_selection,
    plot_selection_heatmap,
    selection_frequency,
)
from ife_jax.nn import IFE
from ife_jax.ops import curvature_response

matplotlib.use("Agg")


class TwoSites(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = IFE(criterion="curvature", ratio=0.5, name="shallow")(x)
        return IFE(criterion="entropy", ratio=0.25, name="deep")(a)


def test_collect_indices_finds_every_block():
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (3, 8, 8, 8)))
    _, state = TwoSites().apply({}, x, mutable=["intermediates"])
    found = collect_indices(state["intermediates"])
    assert list(found) == ["shallow", "deep"]
    assert found["shallow"].shape == (3, 4) and found["deep"].shape == (3, 3)


def test_selection_frequency_by_hand():
    freq = selection_frequency(np.array([[0, 2], [2, 3], [2, 0]]), 4)
    np.testing.assert_allclose(freq, [2 / 3, 0, 1, 1 / 3])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        selection_frequency(np.array([[4, 0]]), 4)


def test_curvature_response_sums_to_scores():
    x = jax.random.normal(jax.random.key(1), (2, 9, 7, 3))
    r = curvature_response(x)
    assert r.shape == (2, 7, 5, 3)
    np.testing.assert_allclose(np.abs(r).sum((1, 2)), curvature_scores(x), rtol=1e-5)


def test_plots_show_kept_and_lowest_channels():
    x = jax.nn.relu(jax.random.normal(jax.random.key(2), (1, 16, 16, 10)))
    s = channel_scores(x, criterion="entropy")[0]
    fig = plot_channel_selection(x[0], s, ratio=0.5, n_show=4)
    titles = [ax.get_title() for ax in fig.axes]
    best = int(np.argmax(s))
    assert titles[0].startswith(f"ch {best}\n")
    assert fig._suptitle.get_text() == "IFE keeps 5 of 10 channels (ratio 0.5)"
    fig = plot_selection_heatmap({"CT": np.linspace(0, 1, 10), "MRI": np.zeros(10)})
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["CT", "MRI"]


def test_selections_by_checkpoint_follow_a_tiny_run(tmp_path):
    from ife_jax.interpret import selections_by_checkpoint
    from ife_jax.train.config import preset
    from ife_jax.train.loop import train_and_evaluate

    config = preset(
        "tiny", ife="entropy", epochs=2, keep_checkpoints=2, data_dir=str(tmp_path / "tfds")
    )
    train_and_evaluate(config, tmp_path / "run")
    x = np.asarray(jax.random.normal(jax.random.key(0), (3, 32, 32, 3)))
    by_step = selections_by_checkpoint(tmp_path / "run", x, batch_size=2)
    assert len(by_step) == 2 and list(by_step) == sorted(by_step)
    for sites in by_step.values():
        # The tiny UNet (widths 4..64) enhances c2 (8 channels) and c3 (16) with ratio 0.5.
        assert [v.shape for v in sites.values()] == [(3, 4), (3, 8)]
        for v, c in zip(sites.values(), (8, 16), strict=True):
            assert ((v >= 0) & (v < c)).all()
            assert all(len(set(row)) == row.size for row in v)  # distinct channels per image
