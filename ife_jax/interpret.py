"""Which channels IFE selects: collection, frequencies and the pictures of the paper's Figs. 2-5.

Matplotlib is imported inside the plotting functions only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ife_jax.ops import num_selected


def collect_indices(intermediates: Mapping) -> dict[str, np.ndarray]:
    """The channel indices every IFE block of a model sowed during ``apply``.

    Args:
      intermediates: the ``"intermediates"`` collection returned by
        ``model.apply(variables, x, mutable=["intermediates"])``.

    Returns:
      ``{"path/to/ife_block": (B, k) int array}``, one entry per IFE block, in traversal order.
    """
    found: dict[str, np.ndarray] = {}

    def walk(tree, path):
        for name, value in tree.items():
            if name == "indices" and isinstance(value, tuple):
                found["/".join(path)] = np.asarray(value[0])
            elif isinstance(value, Mapping):
                walk(value, (*path, name))

    walk(intermediates, ())
    return found


def selection_frequency(indices: np.ndarray, num_channels: int) -> np.ndarray:
    """Fraction of samples in which each channel was selected.

    Args:
      indices: (N, k) selected channel indices, one row per sample.
      num_channels: C.

    Returns:
      (C,) float64 in [0, 1].
    """
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ValueError(f"indices must be (N, k); got shape {indices.shape}.")
    if indices.size and (indices.min() < 0 or indices.max() >= num_channels):
        raise ValueError(
            f"indices must lie in [0, {num_channels}); got {indices.min()}..{indices.max()}."
        )
    counts = np.zeros(num_channels)
    np.add.at(counts, indices.ravel(), 1.0)
    return counts / max(len(indices), 1)


def plot_channel_selection(features, scores, *, ratio: float = 0.5, n_show: int = 6, title=None):
    """The best- and worst-scoring channels of one feature map, with their scores.

    The top row shows the ``n_show`` channels IFE keeps first; the bottom row the ``n_show``
    it ranks lowest (the paper's Figs. 2, 3 and 5).

    Args:
      features: (H, W, C) one sample's features.
      scores: (C,) their scores.
      ratio: IFE ratio; the title says how many of C channels are kept.
      n_show: channels per row.
      title: figure title.

    Returns:
      A matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    features, scores = np.asarray(features, np.float32), np.asarray(scores, np.float64)
    if features.ndim != 3 or scores.shape != (features.shape[-1],):
        raise ValueError(
            f"features must be (H, W, C) and scores (C,); got {features.shape}, {scores.shape}."
        )
    c = features.shape[-1]
    k = num_selected(c, ratio)
    rank = np.argsort(np.where(np.isfinite(scores), -scores, np.inf), kind="stable")
    n = min(n_show, c)
    rows = [("kept", rank[:n]), ("ranked lowest", rank[::-1][:n])]
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.3), squeeze=False)
    for r, (label, chans) in enumerate(rows):
        for i, ch in enumerate(chans):
            ax = axes[r, i]
            ax.imshow(features[..., ch], cmap="magma")
            ax.set_title(f"ch {ch}\n{scores[ch]:.3g}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label)
    fig.suptitle(title or f"IFE keeps {k} of {c} channels (ratio {ratio})")
    fig.tight_layout()
    return fig


def plot_selection_heatmap(frequencies: Mapping[str, np.ndarray], *, title: str = ""):
    """Selection frequency of every channel (columns) per group (rows), e.g. per modality.

    Args:
      frequencies: ``{group name: (C,) frequencies}`` as from :func:`selection_frequency`.
      title: figure title.

    Returns:
      A matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    names = list(frequencies)
    grid = np.stack([np.asarray(frequencies[n], np.float64) for n in names])
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.12 * grid.shape[1]), 0.9 + 0.35 * len(names)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("channel")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="fraction of images selecting it")
    fig.tight_layout()
    return fig


def selections_by_checkpoint(workdir, images, *, batch_size: int = 16) -> dict[int, dict]:
    """The channels every IFE block selects for ``images`` at each saved step of a run.

    Keep every epoch's checkpoint (``keep_checkpoints >= epochs`` in the training config) to
    follow the selection over the whole training.

    Args:
      workdir: a training run of ``ife_jax.train``.
      images: (N, S, S, 3) float32 normalised images (e.g. ``ife_jax.data.to_arrays``).
      batch_size: images per forward pass.

    Returns:
      ``{step: {"path/to/ife_block": (N, k) indices}}`` in step order.

    Raises:
      FileNotFoundError: no checkpoint in ``workdir``.
    """
    import jax

    from ife_jax.train.checkpointing import Checkpointer
    from ife_jax.train.evaluate import load_config
    from ife_jax.train.models import build_model
    from ife_jax.train.plan import plan_for_run

    config = load_config(workdir)
    model = build_model(config, plan=plan_for_run(config, workdir, save=False))

    @jax.jit
    def forward(variables, x):
        _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
        return state["intermediates"]

    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        steps = sorted(checkpointer.recent.all_steps())
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {workdir}")
        out = {}
        for step in steps:
            state, _, _ = checkpointer.read(step)
            variables = {"params": state["params"]}
            if state.get("batch_stats"):
                variables["batch_stats"] = state["batch_stats"]
            parts: dict[str, list] = {}
            for i in range(0, len(images), batch_size):
                found = collect_indices(forward(variables, np.asarray(images[i : i + batch_size])))
                for site, idx in found.items():
                    parts.setdefault(site, []).append(idx)
            out[int(step)] = {site: np.concatenate(v) for site, v in parts.items()}
        return out
    finally:
        checkpointer.close()
