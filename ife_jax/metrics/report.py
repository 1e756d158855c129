"""Evaluation report: per-image CSV, Table-1 style summaries, paired comparison, figures.

A *record* is one image scored by one model: a dict with ``image_id``, ``modality``,
``anatomy``, ``model``, ``empty_case`` and the nine metric keys of
:func:`ife_jax.metrics.compute_all`. :func:`evaluate_masks` makes records from (id, prediction,
ground truth) triples; :func:`write_report` turns a list of records into a folder::

    per_image.csv        one row per record
    summary.txt          overall table, tables by modality and by anatomy, empty-mask counts,
                         and (two or more models) each model's paired comparison with the
                         baseline, t-test p-values on DSC
    summary.csv          the same numbers, one row per (grouping, group, model, metric)
    dsc_by_group.png     DSC per modality and per anatomy, the models side by side (paper Fig. 6)
    overlays.png         prediction red, ground truth green, overlap yellow (paper Fig. 7),
                         when ``overlays`` are given

Tables show mean ± sample std over images (std 0 for one image); Con, DSC, JC, F1 and MAE are
shown x100 as in the paper's tables, HCE, HD, ASD and RVD as computed.

Matplotlib is imported only by the plotting functions and draws off-screen (no pyplot state).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ife_jax.metrics import METRIC_KEYS, compute_all, empty_case
from ife_jax.metrics._inputs import EMPTY_CASES

#: Column titles of the tables, in the paper's order.
COLUMN_TITLES = {
    "con": "Con(%)",
    "dsc": "DSC(%)",
    "jc": "JC(%)",
    "f1": "F1(%)",
    "hce": "HCE",
    "mae": "MAE(%)",
    "hd": "HD",
    "asd": "ASD",
    "rvd": "RVD",
}
#: Factor each metric is shown with in the tables.
DISPLAY_SCALE = {"con": 100.0, "dsc": 100.0, "jc": 100.0, "f1": 100.0, "mae": 100.0}
#: Paired differences on DSC with p below this are marked ``*``.
SIGNIFICANCE = 0.05
RECORD_FIELDS = ("image_id", "modality", "anatomy", "model", "empty_case", *METRIC_KEYS)


def parse_group(image_id: str) -> tuple[str, str]:
    """(modality, anatomy) from a file name ``Modality_Anatomy_rest.png``.

    The first two ``_``-separated tokens of the base name without extension, as the Cosmos55k
    evaluation groups images; a missing token is ``"unknown"``.
    """
    stem = os.path.splitext(os.path.basename(str(image_id)))[0]
    parts = stem.split("_")
    modality = parts[0] if parts[0] else "unknown"
    anatomy = parts[1] if len(parts) > 1 and parts[1] else "unknown"
    return modality, anatomy


def evaluate_masks(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    model: str = "model",
    convention: str = "standard",
    spacing=1.0,
    group: Callable[[str], tuple[str, str]] = parse_group,
    progress: bool = True,
) -> list[dict]:
    """Score many images: one record per ``(image_id, pred, gt)``.

    Args:
      pairs: iterable of ``(image_id, pred (H, W), gt (H, W))``; a sized iterable gives the
        progress bar a total.
      model: the model name stored in each record.
      convention: ``"standard"`` or ``"paper"`` (see :mod:`ife_jax.metrics`).
      spacing: pixel size for the distances.
      group: maps an image id to ``(modality, anatomy)``.
      progress: show a tqdm progress bar.

    Returns:
      List of records (dicts with :data:`RECORD_FIELDS`).
    """
    from tqdm.auto import tqdm

    total = len(pairs) if hasattr(pairs, "__len__") else None
    records = []
    for image_id, pred, gt in tqdm(pairs, total=total, disable=not progress, desc=model):
        modality, anatomy = group(image_id)
        rec = {
            "image_id": str(image_id),
            "modality": modality,
            "anatomy": anatomy,
            "model": model,
            "empty_case": empty_case(pred, gt, convention=convention),
        }
        rec.update(compute_all(pred, gt, convention=convention, spacing=spacing))
        records.append(rec)
    return records


def write_csv(records: Sequence[dict], path: str) -> None:
    """One row per record, columns :data:`RECORD_FIELDS` (metrics unscaled, full precision)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RECORD_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(
                {k: (repr(float(r[k])) if k in METRIC_KEYS else r[k]) for k in RECORD_FIELDS}
            )


def read_csv(path: str) -> list[dict]:
    """Records back from :func:`write_csv` (metrics as floats)."""
    with open(path, newline="") as f:
        return [
            {k: (float(v) if k in METRIC_KEYS else v) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def _models(records: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in records))


def _check_records(records: Sequence[dict]) -> None:
    if len(records) == 0:
        raise ValueError("records is empty: nothing to summarise.")
    missing = [k for k in RECORD_FIELDS if k not in records[0] and k != "empty_case"]
    if missing:
        raise ValueError(f"records lack the fields {missing}.")


def summarize(records: Sequence[dict], *, by: str | None = None) -> list[dict]:
    """Mean and std of each metric per model (and per group when ``by`` is a record field).

    Returns:
      Rows ``{"model", "group", "n", key: (mean, std), ...}``, unscaled; ``group`` is ``"all"``
      when ``by`` is None. Groups are sorted, models in first-seen order.
    """
    _check_records(records)
    groups = ["all"] if by is None else sorted({str(r[by]) for r in records})
    rows = []
    for g in groups:
        for m in _models(records):
            sel = [r for r in records if r["model"] == m and (by is None or str(r[by]) == g)]
            if not sel:
                continue
            row = {"model": m, "group": g, "n": len(sel)}
            for k in METRIC_KEYS:
                v = np.array([float(r[k]) for r in sel])
                row[k] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0)
            rows.append(row)
    return rows


def format_table(records: Sequence[dict], *, by: str | None = None, std: bool = True) -> str:
    """The printable Table-1 style summary: one line per model (per group), mean ± std.

    Args:
      records: list of records.
      by: ``None`` for one overall table, or ``"modality"`` / ``"anatomy"`` (any record field).
      std: show ``± std`` after each mean.
    """
    rows = summarize(records, by=by)
    head = ["Group", "Model", "N", *(COLUMN_TITLES[k] for k in METRIC_KEYS)]
    body = []
    for row in rows:
        cells = [row["group"], row["model"], str(row["n"])]
        for k in METRIC_KEYS:
            mean, sd = row[k]
            s = DISPLAY_SCALE.get(k, 1.0)
            cells.append(f"{mean * s:.2f}" + (f" ± {sd * s:.2f}" if std else ""))
        body.append(cells)
    if by is None:
        head, body = head[1:], [b[1:] for b in body]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in (head, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def empty_counts(records: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Per model, how many images fell in each empty-mask case (:data:`EMPTY_CASES`)."""
    out = {}
    for m in _models(records):
        c = dict.fromkeys(EMPTY_CASES, 0)
        for r in records:
            if r["model"] == m and "empty_case" in r:
                c[r["empty_case"]] += 1
        out[m] = c
    return out


def format_empty_counts(records: Sequence[dict]) -> str:
    names = {
        "none": "neither empty",
        "both": "both empty",
        "pred": "prediction empty",
        "gt": "ground truth empty",
    }
    lines = ["Empty-mask cases (images per model):"]
    for m, c in empty_counts(records).items():
        lines.append(f"  {m}: " + ", ".join(f"{names[k]} {c[k]}" for k in EMPTY_CASES))
    return "\n".join(lines)


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test p-value (``scipy.stats.ttest_rel``) of two equal-length samples.

    Returns 1.0 when every difference is equal (no evidence of a difference; the t statistic is
    undefined), and NaN for fewer than two pairs.
    """
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have equal length, got {a.shape} and {b.shape}.")
    if a.size < 2:
        return math.nan
    d = a - b
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


def compare_models(
    records: Sequence[dict], model_a: str, model_b: str, *, by: str | None = None, key: str = "dsc"
) -> list[dict]:
    """Paired comparison of two models on the images both scored.

    Returns:
      Rows ``{"group", "n", "mean_a", "mean_b", "diff" (b - a), "p", "significant"}``, unscaled,
      with ``p`` the paired t-test p-value on ``key`` and ``significant`` = p < 0.05.
    """
    _check_records(records)
    if key not in METRIC_KEYS:
        raise ValueError(f"key must be one of {METRIC_KEYS}, got {key!r}.")
    ra = {r["image_id"]: r for r in records if r["model"] == model_a}
    rb = {r["image_id"]: r for r in records if r["model"] == model_b}
    for name, rs in ((model_a, ra), (model_b, rb)):
        if not rs:
            raise ValueError(f"no records for model {name!r}; models are {_models(records)}.")
    ids = [i for i in ra if i in rb]
    groups = ["all"] if by is None else sorted({str(ra[i][by]) for i in ids})
    rows = []
    for g in groups:
        sel = [i for i in ids if by is None or str(ra[i][by]) == g]
        a = [float(ra[i][key]) for i in sel]
        b = [float(rb[i][key]) for i in sel]
        p = paired_ttest(a, b)
        rows.append(
            {
                "group": g,
                "n": len(sel),
                "mean_a": float(np.mean(a)) if sel else math.nan,
                "mean_b": float(np.mean(b)) if sel else math.nan,
                "diff": float(np.mean(b) - np.mean(a)) if sel else math.nan,
                "p": p,
                "significant": bool(p < SIGNIFICANCE),
            }
        )
    return rows


def format_comparison(
    records: Sequence[dict], model_a: str, model_b: str, *, by: str | None = None
) -> str:
    """Printable paired comparison on DSC (x100); ``*`` marks p < 0.05."""
    rows = compare_models(records, model_a, model_b, by=by)
    lines = [f"Paired comparison on DSC(%): {model_b} vs {model_a} (paired t-test, * p < 0.05)"]
    lines.append(
        f"  {'Group':<16} {'N':>6} {model_a[:12]:>12} {model_b[:12]:>12} {'diff':>8} {'p':>10}"
    )
    for r in rows:
        p = "n/a" if math.isnan(r["p"]) else f"{r['p']:.3g}" + ("*" if r["significant"] else "")
        lines.append(
            f"  {r['group'][:16]:<16} {r['n']:>6} {100 * r['mean_a']:>12.2f} "
            f"{100 * r['mean_b']:>12.2f} {100 * r['diff']:>+8.2f} {p:>10}"
        )
    return "\n".join(lines)


def plot_dsc_by_group(
    records: Sequence[dict], path: str, *, models: Sequence[str] | None = None
) -> None:
    """Bar chart of mean DSC (%) per modality (left) and per anatomy (right), models side by side.

    Error bars are one std over images. Writes a PNG to ``path``.
    """
    from matplotlib.figure import Figure

    _check_records(records)
    models = list(models) if models is not None else _models(records)
    fig = Figure(figsize=(14, 4.5), constrained_layout=True)
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2.5]})
    width = 0.8 / max(len(models), 1)
    for ax, by in zip(axes, ("modality", "anatomy"), strict=True):
        groups = sorted({str(r[by]) for r in records})
        x = np.arange(len(groups))
        for j, m in enumerate(models):
            means, sds = [], []
            for g in groups:
                v = [100 * float(r["dsc"]) for r in records if r["model"] == m and str(r[by]) == g]
                means.append(np.mean(v) if v else 0.0)
                sds.append(np.std(v, ddof=1) if len(v) > 1 else 0.0)
            ax.bar(
                x + (j - (len(models) - 1) / 2) * width, means, width, yerr=sds, capsize=2, label=m
            )
        ax.set_xticks(x)
        ax.set_xticklabels(
            groups,
            rotation=45 if by == "anatomy" else 0,
            ha="right" if by == "anatomy" else "center",
        )
        ax.set_ylabel("DSC (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"DSC per {by}")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def _to_rgb01(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got {a.shape}.")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    a = a.astype(np.float64)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def overlay(
    image: np.ndarray,
    pred_bin: np.ndarray,
    gt_bin: np.ndarray | None = None,
    *,
    alpha: float = 0.5,
) -> np.ndarray:
    """RGB float (H, W, 3) in [0, 1]: prediction red, ground truth green, both yellow.

    Args:
      image: (H, W), (H, W, 1) or (H, W, 3); uint8 is shown on its 0-255 scale, any other
        dtype min-max scaled.
      pred_bin: (H, W) bool prediction.
      gt_bin: (H, W) bool ground truth, or None to show the prediction alone.
      alpha: weight of the colour where a mask is set.

    Raises:
      ValueError: if an image or mask shape does not fit, naming the shapes.
    """
    rgb = _to_rgb01(image)
    p = np.asarray(pred_bin, bool)
    g = np.zeros_like(p) if gt_bin is None else np.asarray(gt_bin, bool)
    if p.shape != rgb.shape[:2] or g.shape != rgb.shape[:2]:
        raise ValueError(f"masks {p.shape}, {g.shape} must match the image {rgb.shape[:2]}.")
    color = np.stack([p, g, np.zeros_like(p)], axis=-1).astype(np.float64)
    m = (p | g)[..., None]
    return np.where(m, (1 - alpha) * rgb + alpha * color, rgb)


def overlay_grid(
    images: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    preds: dict[str, Sequence[np.ndarray]],
    path: str,
    *,
    titles: Sequence[str] | None = None,
    convention: str = "standard",
    dsc: dict[str, Sequence[float]] | None = None,
) -> None:
    """Qualitative grid (paper Fig. 7): one row per image, columns image then one per model.

    Args:
      images: N images (H, W) or (H, W, 3) (shown as :func:`overlay` shows them).
      gts: N ground truths; preds: model name -> N predictions (binarised as ``convention``).
      path: PNG file to write.
      titles: optional row labels (e.g. image ids).
      convention: how predictions and ground truths are binarised and scored.
      dsc: model name -> the N DSC values already computed (e.g. from the records); computed
        with :func:`~ife_jax.metrics.compute_all` when not given.
    """
    from matplotlib.figure import Figure

    from ife_jax.metrics import binarize_prediction, binarize_target

    n = len(images)
    if n == 0 or len(gts) != n or any(len(v) != n for v in preds.values()):
        raise ValueError("images, gts and every model's preds must have the same, non-zero length.")
    if dsc is not None and any(len(dsc.get(name, ())) != n for name in preds):
        raise ValueError(f"dsc must hold {n} values for each of the models {list(preds)}.")
    cols = 1 + len(preds)
    # A fixed layout in inches (each 2.6 in cell: 0.3 in for the title over a 2.3 x 2.4 in
    # image): matplotlib's constrained layout took about half of the figure's time.
    width, height = 2.6 * cols, 2.6 * n + 0.3
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=0.1 / width,
        right=1 - 0.1 / width,
        bottom=0.05 / height,
        top=1 - 0.55 / height,
        wspace=0.2 / 2.4,
        hspace=0.3 / 2.3,
    )
    axes = np.atleast_2d(fig.subplots(n, cols, squeeze=False))
    for i in range(n):
        g = binarize_target(gts[i], convention=convention)
        axes[i, 0].imshow(_to_rgb01(images[i]))
        axes[i, 0].set_title(titles[i] if titles else "image", fontsize=8)
        for j, (name, ps) in enumerate(preds.items(), start=1):
            p = binarize_prediction(ps[i], convention=convention)
            axes[i, j].imshow(overlay(images[i], p, g))
            if dsc is not None:
                d = dsc[name][i]
            else:
                d = compute_all(ps[i], gts[i], convention=convention)["dsc"]
            axes[i, j].set_title(f"{name}  DSC {100 * d:.1f}", fontsize=8)
        for ax in axes[i]:
            ax.set_axis_off()
    fig.suptitle(
        "prediction: red, ground truth: green, overlap: yellow", fontsize=9, y=1 - 0.1 / height
    )
    fig.savefig(path, dpi=100)


def summary_rows(records: Sequence[dict]) -> list[dict]:
    """Flat rows for summary.csv: grouping, group, model, n, metric, mean, std (unscaled)."""
    out = []
    for by in (None, "modality", "anatomy"):
        for row in summarize(records, by=by):
            for k in METRIC_KEYS:
                out.append(
                    {
                        "grouping": by or "all",
                        "group": row["group"],
                        "model": row["model"],
                        "n": row["n"],
                        "metric": k,
                        "mean": row[k][0],
                        "std": row[k][1],
                    }
                )
    return out


def write_report(
    records: Sequence[dict],
    out_dir: str,
    *,
    model_names: Sequence[str] | None = None,
    overlays: dict | None = None,
    baseline: str | None = None,
) -> dict[str, str]:
    """Write the evaluation report of ``records`` into ``out_dir`` (created if needed).

    Args:
      records: list of records (see the module docstring), one or more models.
      out_dir: output folder.
      model_names: the models to report, in order; default all, first-seen order.
      overlays: optional ``{"images": [...], "gts": [...], "preds": {model: [...]},
        "titles": [...]}`` for the qualitative grid, with optional ``"dsc"`` (model -> the
        shown images' DSC, so they are not computed again) and ``"convention"``.
      baseline: the model every other model is compared with (paired t-test on DSC, overall,
        by modality and by anatomy); default the first of ``model_names``.

    Returns:
      Name -> path of each file written.

    Raises:
      ValueError: if ``model_names`` or ``baseline`` name a model without records.
    """
    _check_records(records)
    models = list(model_names) if model_names is not None else _models(records)
    unknown = [m for m in models if m not in _models(records)]
    if unknown:
        raise ValueError(f"model_names {unknown} have no records; models are {_models(records)}.")
    if baseline is None:
        baseline = models[0]
    elif baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not one of the reported models {models}.")
    recs = [r for r in records if r["model"] in models]
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "per_image": os.path.join(out_dir, "per_image.csv"),
        "summary_txt": os.path.join(out_dir, "summary.txt"),
        "summary_csv": os.path.join(out_dir, "summary.csv"),
        "dsc_by_group": os.path.join(out_dir, "dsc_by_group.png"),
    }
    write_csv(recs, paths["per_image"])
    parts = [
        "Overall",
        format_table(recs),
        "",
        "By modality",
        format_table(recs, by="modality"),
        "",
        "By anatomy",
        format_table(recs, by="anatomy"),
        "",
        format_empty_counts(recs),
    ]
    for other in models:
        if other == baseline:
            continue
        for by in (None, "modality", "anatomy"):
            parts += ["", format_comparison(recs, baseline, other, by=by)]
    with open(paths["summary_txt"], "w") as f:
        f.write("\n".join(parts) + "\n")
    rows = summary_rows(recs)
    with open(paths["summary_csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot_dsc_by_group(recs, paths["dsc_by_group"], models=models)
    if overlays is not None:
        paths["overlays"] = os.path.join(out_dir, "overlays.png")
        overlay_grid(
            overlays["images"],
            overlays["gts"],
            overlays["preds"],
            paths["overlays"],
            titles=overlays.get("titles"),
            convention=overlays.get("convention", "standard"),
            dsc=overlays.get("dsc"),
        )
    return paths
