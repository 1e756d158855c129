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
      A :class:`matplotlib.figure.Figure` (not registered with pyplot; a notebook shows it
      when it is a cell's value or passed to ``display``).
    """
    from matplotlib.figure import Figure

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
    fig = Figure(figsize=(1.9 * n, 4.3))
    axes = fig.subplots(2, n, squeeze=False)
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
      A :class:`matplotlib.figure.Figure` (not registered with pyplot; a notebook shows it
      when it is a cell's value or passed to ``display``).
    """
    from matplotlib.figure import Figure

    names = list(frequencies)
    grid = np.stack([np.asarray(frequencies[n], np.float64) for n in names])
    fig = Figure(figsize=(min(14, 2 + 0.12 * grid.shape[1]), 0.9 + 0.35 * len(names)))
    ax = fig.subplots()
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

    from ife_jax.train import load_run

    with load_run(workdir) as run:

        @jax.jit
        def forward(variables, x):
            _, state = run.model.apply(variables, x, train=False, mutable=["intermediates"])
            return state["intermediates"]

        steps = run.steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {workdir}")
        out = {}
        for step in steps:
            variables = run.variables(step)
            parts: dict[str, list] = {}
            for i in range(0, len(images), batch_size):
                found = collect_indices(forward(variables, np.asarray(images[i : i + batch_size])))
                for site, idx in found.items():
                    parts.setdefault(site, []).append(idx)
            out[int(step)] = {site: np.concatenate(v) for site, v in parts.items()}
        return out


def synthetic_volume(shape: tuple[int, int, int] = (24, 48, 48), *, seed: int = 0) -> np.ndarray:
    """A (D, H, W) float32 test volume in [0, 1]: a bright sphere, a dimmer ellipsoid and noise."""
    d, h, w = shape
    zz, yy, xx = np.meshgrid(
        np.linspace(-1, 1, d), np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij"
    )
    sphere = (zz + 0.2) ** 2 + (yy - 0.3) ** 2 + (xx - 0.3) ** 2 < 0.25
    ellipsoid = (zz / 0.8) ** 2 + ((yy + 0.35) / 0.35) ** 2 + ((xx + 0.2) / 0.55) ** 2 < 1
    noise = np.random.default_rng(seed).normal(0.0, 0.05, shape)
    return np.clip(0.9 * sphere + 0.5 * ellipsoid + noise, 0.0, 1.0).astype(np.float32)


def load_volume(path) -> np.ndarray:
    """A (D, H, W) float32 volume from ``.npy`` (no pickles) or NIfTI (``.nii``/``.nii.gz``,
    needs nibabel), scaled to [0, 1] by its 1st and 99th percentiles.

    NIfTI arrays are (x, y, z); they are returned with z first.
    """
    from pathlib import Path

    path = Path(path)
    name = path.name.lower()
    if name.endswith(".npy"):
        v = np.load(path, allow_pickle=False)
    elif name.endswith((".nii", ".nii.gz")):
        try:
            import nibabel
        except ImportError:
            raise ValueError(f"reading {path} needs nibabel (pip install nibabel).") from None
        v = np.transpose(np.asarray(nibabel.load(str(path)).dataobj), (2, 1, 0))
    else:
        raise ValueError(f"{path}: expected a .npy, .nii or .nii.gz volume.")
    if v.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D volume; got shape {v.shape}.")
    lo, hi = np.percentile(v, [1, 99])
    return np.clip((v - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def volume_features(volume, *, channels: int = 8, seed: int = 0) -> np.ndarray:
    """(1, D, H, W, channels) ReLU features of a (D, H, W) volume from a fixed random 3x3x3
    filter bank: stand-ins for a 3-D network's first-layer features, to score with IFE."""
    import jax
    import jax.numpy as jnp

    v = jnp.asarray(volume, jnp.float32)[None, ..., None]
    rng = np.random.default_rng(seed)
    kernels = rng.normal(0.0, 1.0 / np.sqrt(27), (3, 3, 3, 1, channels)).astype(np.float32)
    bias = rng.normal(0.0, 0.05, channels).astype(np.float32)
    out = jax.lax.conv_general_dilated(
        v, kernels, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )
    return np.asarray(jax.nn.relu(out + bias))


def plot_volume_ife(features, *, ratio: float = 0.5, depth: int | None = None):
    """The 3-D IFE of one volume's features, one row per channel (best curvature first).

    Columns: the channel's slice at ``depth``, its 3-D curvature response there (3x3x3
    kernel) and its 26-neighbour mean ``j`` (the second coordinate of the 3-D entropy). Row
    titles give both scores and whether IFE keeps the channel by curvature (C) and by
    entropy (E).

    Args:
      features: (1, D, H, W, C) features.
      ratio: IFE ratio.
      depth: the D index shown (default the middle).

    Returns:
      A :class:`matplotlib.figure.Figure` (not registered with pyplot; a notebook shows it
      when it is a cell's value or passed to ``display``).
    """
    from matplotlib.figure import Figure

    from ife_jax.ops import curvature_response, curvature_scores, entropy_scores
    from ife_jax.ops.entropy import neighbour_mean

    x = np.asarray(features, np.float32)
    if x.ndim != 5 or x.shape[0] != 1:
        raise ValueError(f"features must be (1, D, H, W, C); got {x.shape}.")
    _, d, _, _, c = x.shape
    depth = d // 2 if depth is None else int(depth)
    if not 1 <= depth <= d - 2:
        raise ValueError(f"depth must lie in [1, {d - 2}] (a valid 3x3x3 centre); got {depth}.")
    k = num_selected(c, ratio)
    curv = np.asarray(curvature_scores(x))[0]
    ent = np.asarray(entropy_scores(x))[0]
    response = np.asarray(curvature_response(x))[0, depth - 1]
    j = np.asarray(neighbour_mean(np.moveaxis(x[0], -1, 0), volume=True))[:, depth]
    kept_c = set(np.argsort(-curv, kind="stable")[:k].tolist())
    kept_e = set(np.argsort(-ent, kind="stable")[:k].tolist())
    order = np.argsort(-curv, kind="stable")
    fig = Figure(figsize=(6.6, 2.0 * c))
    axes = fig.subplots(c, 3, squeeze=False)
    for r, ch in enumerate(order):
        marks = ("C" if ch in kept_c else "-") + ("E" if ch in kept_e else "-")
        panels = [
            (x[0, depth, :, :, ch], f"ch {ch} [{marks}]", "gray"),
            (response[..., ch], f"curvature {curv[ch]:.3g}", "coolwarm"),
            (j[ch], f"entropy {ent[ch]:.3g}", "magma"),
        ]
        for col, (img, label, cmap) in enumerate(panels):
            ax = axes[r, col]
            ax.imshow(img, cmap=cmap)
            ax.set_title(label, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"3-D IFE keeps {k} of {c} channels (C: curvature, E: entropy)", fontsize=9)
    fig.tight_layout()
    return fig
