"""nnU-Net preprocessing: transpose, crop to non-zero, normalise, resample; and its inverse.

Per case (:func:`preprocess_case`), in nnU-Net's order:

1. transpose to the plans' axis order (coarsest spacing first);
2. crop to the bounding box of the non-zero voxels;
3. normalise each channel by its scheme (``"ct"``: clip to the foreground [p0.5, p99.5],
   subtract the foreground mean, divide by max(std, 1e-8); ``"zscore"``: the image's own mean
   and std, over the non-zero region when ``use_mask_for_norm``; outside it the value is 0);
4. resample to the configuration's spacing (``2d`` keeps the out-of-plane spacing): images with
   third-order splines, labels one-hot with linear interpolation (a voxel takes the label whose
   interpolated indicator is >= 0.5). When one axis' spacing is more than 3x the finest
   (before or, failing that, after resampling) that axis is resampled separately with nearest
   neighbours and the planes in-plane (nnU-Net's "separate z").

:func:`restore_probabilities` undoes 4 -> 2 -> 1 for predicted class probabilities (linear, the
same separate-axis rule), so a prediction lands on the raw voxel grid. Preprocessed cases are
cached as ``CASE.npz`` (``data`` float32 (C, ...), ``seg`` int8) + ``CASE.json`` (what the
inverse needs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.transform import resize

from ife_jax.nnunet.data import Volume
from ife_jax.nnunet.fingerprint import nonzero_bbox
from ife_jax.nnunet.plans import ANISOTROPY, Plans


@dataclass(frozen=True)
class CaseProperties:
    """What is needed to map a prediction back onto the raw grid."""

    case: str
    raw_shape: tuple[int, int, int]  # raw axis order
    spacing: tuple[float, float, float]  # raw axis order
    bbox: tuple[tuple[int, int], ...]  # transposed axis order
    cropped_shape: tuple[int, int, int]  # transposed axis order
    cropped_spacing: tuple[float, float, float]  # transposed axis order
    target_spacing: tuple[float, float, float]  # transposed axis order
    affine: tuple[tuple[float, ...], ...]


def target_spacing(plans: Plans, configuration: str, spacing_t) -> tuple[float, float, float]:
    """The spacing a case is resampled to (``2d`` keeps the case's out-of-plane spacing)."""
    config = plans.configuration(configuration)
    if len(config.spacing) == 2:
        return (float(spacing_t[0]), *config.spacing)
    return tuple(config.spacing)


def normalize(image: np.ndarray, plans: Plans) -> np.ndarray:
    """Step 3 on a cropped (C, Z, Y, X) image; float32."""
    out = np.empty(image.shape, np.float32)
    nonzero = np.any(image != 0, axis=0)
    for c, scheme in enumerate(plans.normalization):
        x = image[c].astype(np.float64)
        if scheme == "ct":
            it = plans.intensity[c]
            x = (np.clip(x, it.percentile_00_5, it.percentile_99_5) - it.mean) / max(it.std, 1e-8)
        elif scheme == "zscore":
            if plans.use_mask_for_norm[c]:
                v = x[nonzero]
                x = np.where(nonzero, (x - v.mean()) / max(v.std(), 1e-8), 0.0)
            else:
                x = (x - x.mean()) / max(x.std(), 1e-8)
        out[c] = x
    return out


def _lowres_axis(old, new) -> int | None:
    for spacing in (old, new):
        s = np.asarray(spacing, np.float64)
        if s.max() / s.min() > ANISOTROPY:
            axes = np.flatnonzero(s == s.max())
            return int(axes[0]) if len(axes) == 1 else None
    return None


def resample(
    x: np.ndarray, shape, old_spacing, new_spacing, *, order: int, axis_order: int = 0
) -> np.ndarray:
    """Resample (C, Z, Y, X) float data to ``shape`` (step 4's image rule with ``order``)."""
    shape = tuple(int(n) for n in shape)
    if tuple(x.shape[1:]) == shape:
        return x.astype(np.float32)
    axis = _lowres_axis(old_spacing, new_spacing)
    kw = dict(mode="edge", anti_aliasing=False, preserve_range=True)
    out = []
    for c in x.astype(np.float64):
        if axis is None:
            out.append(resize(c, shape, order=order, **kw))
            continue
        c = np.moveaxis(c, axis, 0)
        plane = tuple(n for a, n in enumerate(shape) if a != axis)
        c = np.stack([resize(s, plane, order=order, **kw) for s in c])
        c = resize(c, (shape[axis], *plane), order=axis_order, **kw)
        out.append(np.moveaxis(c, 0, axis))
    return np.stack(out).astype(np.float32)


def resample_labels(seg: np.ndarray, shape, old_spacing, new_spacing) -> np.ndarray:
    """Step 4's label rule: one-hot, linear, >= 0.5 (separate axis: nearest)."""
    out = np.zeros(tuple(int(n) for n in shape), np.int8)
    if tuple(seg.shape) == tuple(out.shape):
        return seg.astype(np.int8)
    for value in np.unique(seg):
        if value == 0:
            continue
        ind = resample(
            (seg == value)[None].astype(np.float32), shape, old_spacing, new_spacing, order=1
        )
        out[ind[0] >= 0.5] = value
    return out


def preprocess_case(vol: Volume, plans: Plans, configuration: str):
    """Steps 1-4: ``(data (C, ...) float32, seg (...) int8 or None, CaseProperties)``."""
    fwd = list(plans.transpose_forward)
    image = vol.image.transpose(0, *(a + 1 for a in fwd))
    label = None if vol.label is None else vol.label.transpose(fwd)
    spacing_t = tuple(vol.spacing[a] for a in fwd)
    box = nonzero_bbox(image)
    image = image[(slice(None), *box)]
    label = None if label is None else label[box]
    data = normalize(image, plans)
    target = target_spacing(plans, configuration, spacing_t)
    shape = tuple(
        int(round(n * s / t)) for n, s, t in zip(data.shape[1:], spacing_t, target, strict=True)
    )
    data = resample(data, shape, spacing_t, target, order=3)
    seg = None if label is None else resample_labels(label, shape, spacing_t, target)
    props = CaseProperties(
        case=vol.name,
        raw_shape=tuple(int(n) for n in vol.image.shape[1:]),
        spacing=tuple(float(s) for s in vol.spacing),
        bbox=tuple((b.start, b.stop) for b in box),
        cropped_shape=tuple(int(b.stop - b.start) for b in box),
        cropped_spacing=tuple(float(s) for s in spacing_t),
        target_spacing=tuple(float(t) for t in target),
        affine=tuple(tuple(float(v) for v in row) for row in vol.affine),
    )
    return data, seg, props


def restore_probabilities(probs: np.ndarray, props: CaseProperties, plans: Plans) -> np.ndarray:
    """Class probabilities (K, ...) on the preprocessed grid -> (K, raw shape) on the raw grid
    (background 1 outside the crop)."""
    probs = resample(
        probs, props.cropped_shape, props.target_spacing, props.cropped_spacing, order=1
    )
    full_t = tuple(props.raw_shape[a] for a in plans.transpose_forward)
    out = np.zeros((probs.shape[0], *full_t), np.float32)
    out[0] = 1.0
    out[(slice(None), *(slice(a, b) for a, b in props.bbox))] = probs
    return out.transpose(0, *(a + 1 for a in plans.transpose_backward))


def save_case(folder: Path, data: np.ndarray, seg, props: CaseProperties) -> None:
    """Writes ``CASE.npz`` and ``CASE.json`` into ``folder``."""
    import dataclasses

    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"data": data.astype(np.float32)}
    if seg is not None:
        arrays["seg"] = seg.astype(np.int8)
    np.savez(folder / f"{props.case}.npz", **arrays)
    (folder / f"{props.case}.json").write_text(json.dumps(dataclasses.asdict(props)))


def load_case(folder: Path, name: str):
    """``(data, seg, CaseProperties)`` of a cached case (no pickles are read)."""
    from ife_jax.typed_json import from_json

    path = Path(folder) / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            data, seg = f["data"], (f["seg"] if "seg" in f else None)
        props = from_json(
            CaseProperties, json.loads((Path(folder) / f"{name}.json").read_text()), where=name
        )
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: cannot read the preprocessed case ({err}).") from None
    return data, seg, props
