"""The nnU-Net commands as functions: plan, preprocess, train, predict, evaluate.

Folders follow nnU-Net: ``RAW/DatasetXXX_Name`` (input), ``PREPROCESSED/DatasetXXX_Name``
(``dataset_fingerprint.json``, ``nnUNetPlans.json``, ``splits_final.json``, one folder of
cached cases per configuration) and ``RESULTS/DatasetXXX_Name/TRAINER__nnUNetPlans__CONFIG/
fold_F`` (checkpoints, ``progress.jsonl``, a copy of the plans). A dataset is named by its
folder, its full name or its number, looked up in ``RAW`` (``$nnUNet_raw``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from ife_jax.nnunet import data as rawdata
from ife_jax.nnunet import preprocessing
from ife_jax.nnunet.fingerprint import Fingerprint, compute_fingerprint
from ife_jax.nnunet.plans import Plans, format_plans, plan_experiment
from ife_jax.nnunet.training import Schedule, fold_cases, load_params, make_model, train

PLANS_FILE = "nnUNetPlans.json"


def folder(env: str, given: str | os.PathLike | None, default: str) -> Path:
    """``given``, else ``$env``, else ``./default``."""
    return Path(given or os.environ.get(env) or default)


def find_dataset(dataset: str, raw: Path | None = None) -> Path:
    """A raw dataset folder from a path, ``DatasetXXX_Name`` or ``XXX`` (under ``raw``)."""
    path = Path(dataset)
    if path.is_dir():
        return path
    raw = folder("nnUNet_raw", raw, "nnUNet_raw")
    if dataset.isdigit() and raw.is_dir():
        hits = sorted(raw.glob(f"Dataset{int(dataset):03d}_*"))
        if len(hits) == 1:
            return hits[0]
    if (raw / dataset).is_dir():
        return raw / dataset
    raise ValueError(f"dataset {dataset!r}: no such folder, nor under {raw} ($nnUNet_raw).")


def plan(dataset: str, *, raw=None, preprocessed=None, foreground=None, memory_gb=8.0) -> Plans:
    """Fingerprints the training cases and writes the fingerprint and the plans."""
    ds = rawdata.read_dataset(find_dataset(dataset, raw))
    fg = rawdata.foreground_values(ds, foreground)
    fp = compute_fingerprint(rawdata.load_cases(ds, fg), ds.channel_names)
    plans = plan_experiment(fp, dataset_name=ds.name, foreground=fg, memory_gb=memory_gb)
    out = folder("nnUNet_preprocessed", preprocessed, "nnUNet_preprocessed") / ds.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_fingerprint.json").write_text(json.dumps(fp.to_dict(), indent=1))
    plans.save(out / PLANS_FILE)
    return plans


def load_plans(name: str, preprocessed=None) -> tuple[Plans, Path]:
    root = folder("nnUNet_preprocessed", preprocessed, "nnUNet_preprocessed") / name
    path = root / PLANS_FILE
    if not path.exists():
        raise ValueError(f"{path}: no plans; run `ife-jax nnunet plan` first.")
    return Plans.load(path), root


def preprocess(dataset: str, configurations=("2d", "3d_fullres"), *, raw=None, preprocessed=None):
    """Preprocesses every training case for each planned configuration; returns the case
    names."""
    ds = rawdata.read_dataset(find_dataset(dataset, raw))
    plans, root = load_plans(ds.name, preprocessed)
    names = []
    for vol in rawdata.load_cases(ds, plans.foreground):
        for c in configurations:
            if c == "3d_fullres" and c not in [p.configuration for p in plans.configurations]:
                continue
            data, seg, props = preprocessing.preprocess_case(vol, plans, c)
            preprocessing.save_case(root / c, data, seg, props)
        names.append(vol.name)
    return names


def trainer_folder(name: str, configuration: str, fold: str, ife: str | None, results=None):
    trainer = "nnUNetTrainer" + (f"_IFE_{ife}" if ife else "")
    base = folder("nnUNet_results", results, "nnUNet_results") / name
    return base / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"


def train_fold(
    dataset: str,
    configuration: str,
    fold: str,
    *,
    ife=None,
    schedule: Schedule | None = None,
    raw=None,
    preprocessed=None,
    results=None,
    log=print,
):
    """Trains one fold (resuming if its folder has checkpoints)."""
    schedule = schedule or Schedule()
    name = find_dataset(dataset, raw).name
    plans, root = load_plans(name, preprocessed)
    config = plans.configuration(configuration)
    cached = root / configuration
    names = sorted(p.stem for p in cached.glob("*.npz"))
    if not names:
        raise ValueError(f"{cached}: no preprocessed cases; run `ife-jax nnunet preprocess`.")
    out = trainer_folder(name, configuration, fold, ife, results)
    out.mkdir(parents=True, exist_ok=True)
    plans.save(out / "plans.json")
    (out / "schedule.json").write_text(json.dumps(dataclasses.asdict(schedule)))
    cases = fold_cases(root, names, fold)
    return train(
        preprocessed=cached,
        output=out,
        config=config,
        case_names=cases,
        schedule=schedule,
        ife=ife,
        log=log,
    )


def predict(
    inputs: str | Path,
    output: str | Path,
    dataset: str,
    configuration: str,
    fold: str,
    *,
    ife=None,
    mirror=True,
    step=0.5,
    raw=None,
    results=None,
    log=print,
) -> list[Path]:
    """Segments every case of ``inputs`` (``CASE_0000.nii.gz`` ... or PNG files) with a trained
    fold and writes ``CASE.nii.gz`` (the input's affine) or ``CASE.png`` into ``output``."""
    import jax

    try:
        name = find_dataset(dataset, raw).name
    except ValueError:
        name = dataset  # the raw data need not be present to predict
    out_dir = trainer_folder(name, configuration, fold, ife, results)
    if not (out_dir / "plans.json").exists():
        raise ValueError(f"{out_dir}: no trained fold (plans.json missing).")
    plans = Plans.load(out_dir / "plans.json")
    config = plans.configuration(configuration)
    model = make_model(config, ife)
    params = load_params(out_dir, model, config)
    apply = jax.jit(lambda x: model.apply({"params": params}, x, train=False))
    inputs = Path(inputs)
    ending = (
        ".png"
        if any(inputs.glob("*.png"))
        else (".nii.gz" if any(inputs.glob("*.nii.gz")) else ".nii")
    )
    if ending == ".png":
        cases = [
            rawdata.Case(p.stem, (p,), None)
            for p in sorted(inputs.glob("*.png"))
            if not p.stem.endswith("_mask")
        ]
    else:
        cases = rawdata._cases(inputs, inputs, ending, len(plans.channel_names), need_label=False)
    if not cases:
        raise ValueError(f"{inputs}: no input cases (CASE_0000{ending}).")
    written = []
    for vol in rawdata.load_cases(None, plans.foreground, cases=cases, check=False):
        data, _, props = preprocessing.preprocess_case(vol, plans, configuration)
        probs = _predict(apply, data, config, mirror=mirror, step=step)
        full = preprocessing.restore_probabilities(probs, props, plans)
        mask = np.argmax(full, 0).astype(np.uint8)
        path = Path(output) / f"{vol.name}{ending}"
        rawdata.write_prediction(mask, path, affine=vol.affine)
        log(f"{path}: {int(mask.sum())} foreground voxels")
        written.append(path)
    return written


def _predict(apply, data, config, *, mirror, step):
    from ife_jax.nnunet.inference import predict_volume

    return predict_volume(apply, data, config, step=step, mirror=mirror)


def evaluate(predictions: str | Path, references: str | Path) -> list[dict]:
    """Dice, IoU, HD95 and ASSD (mm, from the reference's voxel spacing; pixels for PNG) and
    the predicted / reference volumes (mL; pixels for PNG) of every prediction against the
    label of the same name.

    HD95 is the larger of the two directed 95th percentiles of boundary distances and ASSD the
    mean over both boundaries (:mod:`ife_jax.metrics.surface`), in 3-D with 6-neighbour
    boundaries, or in 2-D for one-slice cases (PNG); an empty prediction or reference gives the
    image diagonal, both empty 0.
    """
    from ife_jax.metrics.overlap import dice_from_counts, jaccard_from_counts
    from ife_jax.metrics.surface import assd, hausdorff95

    rows = []
    for pred in sorted(Path(predictions).iterdir()):
        if not (pred.name.endswith(".nii.gz") or pred.suffix in (".nii", ".png")):
            continue
        ref = Path(references) / pred.name
        if not ref.exists():
            raise ValueError(f"{ref}: no reference label for {pred}.")
        p, spacing, _ = rawdata.read_image_file(pred, mask=True)
        g, spacing, _ = rawdata.read_image_file(ref, mask=True)
        if p.shape != g.shape:
            raise ValueError(f"{pred}: shape {p.shape} differs from {ref}'s {g.shape}.")
        p, g = p > 0, g > 0
        tp, n_p, n_g = (int(np.count_nonzero(v)) for v in (p & g, p, g))
        png = pred.suffix == ".png"
        unit = 1.0 if png else float(np.prod(spacing)) / 1000.0
        sp, pm, gm = (spacing[1:], p[0], g[0]) if p.shape[0] == 1 else (spacing, p, g)
        rows.append(
            {
                "case": pred.name,
                "dice": dice_from_counts(tp, n_p, n_g),
                "iou": jaccard_from_counts(tp, n_p, n_g),
                "hd95": hausdorff95(pm, gm, spacing=sp),
                "assd": assd(pm, gm, spacing=sp),
                "volume_pred": n_p * unit,
                "volume_ref": n_g * unit,
            }
        )
    return rows


__all__ = ["Fingerprint", "evaluate", "format_plans", "plan", "predict", "preprocess", "train_fold"]
