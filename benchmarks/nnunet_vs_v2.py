"""ife-jax's nnU-Net plans and preprocessing next to nnU-Net v2's, on the same raw dataset.

    python benchmarks/nnunet_vs_v2.py RAW_DATASET [RAW_DATASET ...] [--synthetic]
        [--v2-python PYTHON]

For each raw dataset (an nnU-Net ``DatasetXXX_Name`` folder) both planners plan it and the
table shows, per configuration, the target spacing, patch size, batch size, poolings per axis,
features per stage, kernel sizes and normalisation; then the first training case is
preprocessed by both (``3d_fullres``, else ``2d``) and the maximum absolute difference of the
normalised, resampled arrays is printed. ``--synthetic`` adds a generated anisotropic dataset
(4.5-5.5 mm slices, 0.7-0.9 mm in-plane, three MR cases of different sizes).

Nothing is installed. nnU-Net v2 runs in ``--v2-python`` (default: this interpreter) in a
child process with its own ``nnUNet_raw`` / ``nnUNet_preprocessed`` under a temporary folder;
when ``nnunetv2`` or ``torch`` do not import there, only ife-jax's plans are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------- nnU-Net v2 (child process)

V2_SCRIPT = r"""
import json, os, sys
from pathlib import Path
import numpy as np
raw, pre, dataset_id, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
os.environ["nnUNet_raw"], os.environ["nnUNet_preprocessed"] = raw, pre
os.environ["nnUNet_results"] = str(Path(pre).parent / "results")
from nnunetv2.experiment_planning.plan_and_preprocess_api import (
    extract_fingerprints, plan_experiments)
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
extract_fingerprints([dataset_id], check_dataset_integrity=False, clean=True, verbose=False)
plan_experiments([dataset_id])
name = next(p.name for p in Path(pre).iterdir() if p.name.startswith(f"Dataset{dataset_id:03d}_"))
plans = json.loads((Path(pre) / name / "nnUNetPlans.json").read_text())
ds = json.loads((Path(raw) / name / "dataset.json").read_text())
pm = PlansManager(plans)
config = "3d_fullres" if "3d_fullres" in plans["configurations"] else "2d"
cm = pm.get_configuration(config)
ending = ds["file_ending"]
first = sorted((Path(raw) / name / "labelsTr").glob("*" + ending))[0].name[: -len(ending)]
images = [str(Path(raw) / name / "imagesTr" / f"{first}_{int(c):04d}{ending}")
          for c in sorted(ds["channel_names"], key=int)]
data, seg, _ = DefaultPreprocessor(verbose=False).run_case(
    images, str(Path(raw) / name / "labelsTr" / (first + ending)), pm, cm, ds)
np.savez(out / "case.npz", data=data.astype(np.float32), seg=seg.astype(np.int8))
(out / "plans.json").write_text(json.dumps({"plans": plans, "case": first, "config": config}))
"""


def run_v2(dataset: Path, python: str, work: Path):
    """nnU-Net v2's plans and preprocessed first case, or the reason there are none."""
    probe = subprocess.run([python, "-c", "import nnunetv2, torch"], capture_output=True, text=True)
    if probe.returncode:
        return None, f"nnunetv2/torch do not import in {python}"
    raw, pre, out = work / "raw", work / "preprocessed", work / "v2"
    for p in (raw, pre, out):
        p.mkdir(parents=True, exist_ok=True)
    name = dataset.name
    if not (name.startswith("Dataset") and name[7:10].isdigit()):
        raise SystemExit(f"{dataset}: nnU-Net v2 needs a DatasetXXX_Name folder.")
    (raw / name).symlink_to(dataset.resolve(), target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["nnUNet_n_proc_DA"] = "1"
    proc = subprocess.run(
        [python, "-c", V2_SCRIPT, str(raw), str(pre), str(int(name[7:10])), str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode:
        return None, "nnU-Net v2 failed:\n" + proc.stderr[-3000:]
    info = json.loads((out / "plans.json").read_text())
    with np.load(out / "case.npz") as f:
        info["data"], info["seg"] = f["data"], f["seg"]
    return info, None


# ----------------------------------------------------------------- ife-jax


def run_ife(dataset: Path, work: Path, case: str | None, configuration: str | None):
    from ife_jax.nnunet import data as rawdata
    from ife_jax.nnunet import preprocessing, run

    plans = run.plan(str(dataset), preprocessed=work / "ife_preprocessed")
    ds = rawdata.read_dataset(dataset)
    names = [c.name for c in ds.training]
    case = case or sorted(names)[0]
    configuration = configuration or plans.configurations[-1].configuration
    (vol,) = [v for v in rawdata.load_cases(ds, plans.foreground) if v.name == case]
    data, seg, _ = preprocessing.preprocess_case(vol, plans, configuration)
    return plans, data, seg


# ----------------------------------------------------------------- table


def _pools(strides) -> tuple[int, ...]:
    return tuple(int(sum(s[a] == 2 for s in strides)) for a in range(len(strides[0])))


def rows_ife(plans, name: str) -> dict:
    c = plans.configuration(name)
    spacing = c.spacing
    return {
        "spacing": tuple(round(float(s), 4) for s in spacing),
        "median shape": tuple(c.median_shape),
        "patch size": tuple(c.patch_size),
        "batch size": c.batch_size,
        "pools per axis": _pools(c.strides),
        "features": tuple(c.features),
        "kernels": tuple(tuple(k) for k in c.kernel_sizes),
        "normalisation": tuple(plans.normalization),
        "mask for norm": tuple(plans.use_mask_for_norm),
        "transpose": tuple(plans.transpose_forward),
    }


def rows_v2(plans: dict, name: str) -> dict:
    c = plans["configurations"][name]
    arch = c["architecture"]["arch_kwargs"]
    return {
        "spacing": tuple(round(float(s), 4) for s in c["spacing"]),
        "median shape": tuple(int(v) for v in c["median_image_size_in_voxels"]),
        "patch size": tuple(int(v) for v in c["patch_size"]),
        "batch size": int(c["batch_size"]),
        "pools per axis": _pools(arch["strides"]),
        "features": tuple(int(v) for v in arch["features_per_stage"]),
        "kernels": tuple(tuple(int(v) for v in k) for k in arch["kernel_sizes"]),
        "normalisation": tuple(
            {"CTNormalization": "ct", "ZScoreNormalization": "zscore"}.get(s, s)
            for s in c["normalization_schemes"]
        ),
        "mask for norm": tuple(bool(v) for v in c["use_mask_for_norm"]),
        "transpose": tuple(int(v) for v in plans["transpose_forward"]),
    }


def print_table(title: str, ife: dict, v2: dict | None) -> list[str]:
    different = []
    print(f"\n{title}")
    print(f"  {'field':<15} {'ife-jax':<44} {'nnU-Net v2':<44}")
    for key, value in ife.items():
        other = "-" if v2 is None else v2[key]
        mark = "" if v2 is None or other == value else "  <- differs"
        if mark:
            different.append(key)
        print(f"  {key:<15} {str(value):<44} {str(other):<44}{mark}")
    return different


def synthetic_dataset(root: Path) -> Path:
    """Three anisotropic MR cases (4.5-5.5 mm slices, 0.7-0.9 mm in-plane), an ellipsoid label;
    the first case is resampled along every axis."""
    import nibabel

    ds = root / "Dataset900_SynthAniso"
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [(180, 160, 30), (200, 170, 34), (190, 176, 26)]
    spacings = [(0.7, 0.7, 4.5), (0.8, 0.8, 5.0), (0.9, 0.9, 5.5)]  # NIfTI (x, y, z)
    for i, ((x, y, z), spacing) in enumerate(zip(sizes, spacings, strict=True)):
        grid = np.stack(np.meshgrid(*(np.arange(n) for n in (x, y, z)), indexing="ij"), -1)
        centre = np.array([x / 2, y / 2.2, z / 2])
        radius = np.array([x / 5, y / 6, z / 4])
        label = (((grid - centre) / radius) ** 2).sum(-1) <= 1
        image = 100 + 40 * label + rng.normal(0, 10, label.shape)
        image[:6] = 0  # a zero margin to crop
        affine = np.diag([*spacing, 1.0])
        for arr, path, dtype in (
            (image, ds / "imagesTr" / f"case{i:02d}_0000.nii.gz", np.float32),
            (label, ds / "labelsTr" / f"case{i:02d}.nii.gz", np.uint8),
        ):
            nibabel.save(nibabel.Nifti1Image(arr.astype(dtype), affine), str(path))
    meta = {
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    (ds / "dataset.json").write_text(json.dumps(meta, indent=1))
    return ds


def compare(dataset: Path, v2_python: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        v2, why = run_v2(dataset, v2_python, work)
        plans, data, seg = run_ife(
            dataset, work, None if v2 is None else v2["case"], None if v2 is None else v2["config"]
        )
        print(f"\n=== {dataset.name} ===")
        if v2 is None:
            print(f"  (nnU-Net v2 side skipped: {why})")
        v2_names = set() if v2 is None else set(v2["plans"]["configurations"])
        for c in plans.configurations:
            other = rows_v2(v2["plans"], c.configuration) if c.configuration in v2_names else None
            diff = print_table(c.configuration, rows_ife(plans, c.configuration), other)
            if other is not None:
                print(f"  differs in: {', '.join(diff) or 'nothing'}")
        if v2 is None:
            return
        v2_int = v2["plans"]["foreground_intensity_properties_per_channel"]
        for c, it in enumerate(plans.intensity):
            other = v2_int[str(c)]
            print(f"\nforeground intensity, channel {c} (ife-jax / v2):")
            for key in ("mean", "std", "percentile_00_5", "percentile_99_5"):
                print(f"  {key:<16} {getattr(it, key):12.4f} {other[key]:12.4f}")
        a, b = data, v2["data"]
        print(f"\npreprocessed case {v2['case']} ({v2['config']}): ife-jax {a.shape}, v2 {b.shape}")
        if a.shape == b.shape:
            d = np.abs(a.astype(np.float64) - b)
            scale = float(np.abs(b).max())
            print(
                f"  data: max |diff| {d.max():.3g} (max |v2| {scale:.3g}), "
                f"mean |diff| {d.mean():.3g}"
            )
            s2 = np.where(v2["seg"] < 0, 0, v2["seg"])  # v2 marks outside the crop with -1
            print(f"  seg: {int((seg != s2).sum())} of {seg.size} voxels differ")
        else:
            print("  shapes differ: no voxelwise comparison")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", type=Path)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--v2-python", default=sys.executable)
    args = parser.parse_args(argv)
    datasets = list(args.datasets)
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            datasets.append(synthetic_dataset(Path(tmp)))
        if not datasets:
            parser.error("give a raw dataset folder or --synthetic")
        for ds in datasets:
            compare(ds, args.v2_python)


if __name__ == "__main__":
    main()
