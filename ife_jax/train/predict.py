"""Prediction on image files: a trained run and PNG/JPEG files in, mask and overlay PNGs out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ife_jax.data.images import read_image
from ife_jax.metrics.report import overlay
from ife_jax.train.evaluate import load_model
from ife_jax.train.inference import predict_images
from ife_jax.train.step import make_eval_step


def output_paths(images: Sequence[str | Path], output: str | Path) -> list[tuple[Path, Path]]:
    """``(NAME_mask.png, NAME_overlay.png)`` in ``output`` for every image ``NAME.ext``.

    Raises:
      ValueError: naming both inputs, if two images would write the same file (``a/x.png`` and
        ``b/x.png``, ``x.png`` and ``x.jpg``, or one file given twice; compared without regard
        to case, as on macOS and Windows), or naming the input that an output would replace.
    """
    output = Path(output)
    owners: dict[str, str | Path] = {}
    paths = []
    for image in images:
        stem = Path(image).stem
        pair = (output / f"{stem}_mask.png", output / f"{stem}_overlay.png")
        for out in pair:
            key = out.name.casefold()
            if key in owners:
                raise ValueError(
                    f"{owners[key]} and {image} would both be written to {out}; give images "
                    "with different names (or predict them in separate runs)."
                )
            owners[key] = image
        paths.append(pair)
    inputs = {Path(p).resolve(): p for p in images}
    for pair in paths:
        for out in pair:
            if out.resolve() in inputs:
                raise ValueError(
                    f"writing {out} would replace the input image {inputs[out.resolve()]}."
                )
    return paths


def check_arguments(
    images: Sequence[str | Path], output: str | Path, threshold: float
) -> list[tuple[Path, Path]]:
    """Checks ``predict``'s arguments before anything is read; returns the output paths.

    Raises:
      ValueError: no images, a threshold outside (0, 1) or NaN, or colliding output names (see
        :func:`output_paths`), each naming the value or the files.
    """
    if not images:
        raise ValueError("no images given")
    if not 0.0 < threshold < 1.0:  # also rejects NaN
        raise ValueError(f"threshold must be a probability in (0, 1); got {threshold!r}.")
    return output_paths(images, output)


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
    prediction in red over the image) to ``output``, at the image's original size. Images are
    read by :func:`ife_jax.data.images.read_image`, exactly as the dataset builders read them.

    Args:
      workdir: a training run's folder.
      images: image files; their names (without folder and extension) must differ.
      output: the folder to write to (created if missing).
      checkpoint: ``"best"`` or ``"latest"``.
      threshold: foreground where the probability is ``>= threshold``; in (0, 1).

    Returns:
      The mask paths written, one per image.

    Raises:
      ValueError: no images, a threshold outside (0, 1) or NaN, two images with the same
        output name, or an unreadable image (each message names the value or the file).
    """
    paths = check_arguments(images, output, threshold)
    arrays = [read_image(p) for p in images]
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
    for (mask_path, overlay_path), image, prob in zip(paths, arrays, probs, strict=True):
        mask = prob >= threshold
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        Image.fromarray(np.round(255 * overlay(image, mask)).astype(np.uint8)).save(overlay_path)
        written.append(mask_path)
    return written
