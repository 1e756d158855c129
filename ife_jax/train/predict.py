"""Prediction on image files: a trained run and PNG/JPEG files in, mask and overlay PNGs out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ife_jax.train.evaluate import load_model, overlay
from ife_jax.train.inference import predict_images
from ife_jax.train.step import make_eval_step


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (grey replicated, alpha dropped)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from err


def predict(
    workdir: str | Path,
    images: Sequence[str | Path],
    output: str | Path,
    *,
    checkpoint: str = "best",
    threshold: float = 0.5,
) -> list[Path]:
    """Segments image files with a trained run.

    For each ``name.ext`` writes ``name_mask.png`` (0/255) and ``name_overlay.png`` (the
    prediction in red over the image) to ``output``, at the image's original size.

    Returns:
      The mask paths written.
    """
    if not images:
        raise ValueError("no images given")
    arrays = [read_rgb(p) for p in images]
    config, model, variables, mesh, _ = load_model(workdir, checkpoint=checkpoint)
    probs = predict_images(
        make_eval_step(model, mesh),
        variables,
        arrays,
        size=config.eval_size,
        batch_size=config.batch_size,
        mesh=mesh,
    )
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for path, image, prob in zip(images, arrays, probs, strict=True):
        mask = prob >= threshold
        stem = Path(path).stem
        Image.fromarray(mask.astype(np.uint8) * 255).save(output / f"{stem}_mask.png")
        Image.fromarray(overlay(image, mask)).save(output / f"{stem}_overlay.png")
        written.append(output / f"{stem}_mask.png")
    return written
