#!/usr/bin/env python3
"""Write the cross-validation tables of ``src/livseg/weights/MODEL_CARD.md`` from the results.

Reads a ``cv_summary.json`` written by ``livseg cv`` / :func:`livseg.train.cv.cross_validate`
(``scripts/train_pretrained.py --install`` copies it to ``src/livseg/weights/``) and prints
Markdown tables (one summary column per cascade, then per case for each, then the training time
of every fold model) to paste or to include in the model card, so that every number in the card
is traceable to a file produced by the documented procedure.

Both formats are read: ``livseg-cv-2`` (``format`` key; cases carry their ``fold``, ``models``
their CPU and wall minutes) and the earlier file without a ``format`` key (the one shipped with
v0.2: cascades, summaries and cases only). A cascade named ``crunet`` or ``densefcn`` is headed
by its ``livseg segment --model``; any other by its name.

Usage::

    python scripts/write_model_card.py runs/pretrained/cv_summary.json
"""

from __future__ import annotations

import json
import math
import sys

SUMMARY_ROWS = [
    ("liver_dice_per_case", "Liver Dice per case"),
    ("liver_dice_global", "Liver Dice global"),
    ("liver_voe", "Liver VOE"),
    ("liver_rvd", "Liver RVD"),
    ("liver_assd", "Liver ASSD (mm)"),
    ("liver_rmsd", "Liver RMSD (mm)"),
    ("liver_msd", "Liver MSD (mm)"),
    ("tumor_dice_per_case", "Tumour Dice per case"),
    ("tumor_dice_global", "Tumour Dice global"),
    ("lesion_precision", "Lesion precision (IoU > 0.5)"),
    ("lesion_recall", "Lesion recall (IoU > 0.5)"),
    ("lesion_precision_greater_zero", "Lesion precision (any overlap)"),
    ("lesion_recall_greater_zero", "Lesion recall (any overlap)"),
    ("tumor_burden_rmse", "Tumour burden RMSE"),
    ("tumor_burden_max_abs_error", "Tumour burden max abs error"),
]


def _fmt(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.3f}"


#: cascades named after ``livseg segment --model``
SEGMENT_MODELS = ("crunet", "densefcn")


def _heading(name: str) -> str:
    return f"`--model {name}`" if name in SEGMENT_MODELS else f"`{name}`"


def main(path: str) -> int:
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    cascades = doc["cascades"]
    names = list(cascades)
    print("| metric | " + " | ".join(_heading(n) for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for key, name in SUMMARY_ROWS:
        print(
            f"| {name} | " + " | ".join(_fmt(cascades[n]["summary"].get(key)) for n in names) + " |"
        )
    for n in names:
        _intervals(n, cascades[n]["cases"])
    for n in names:
        tumour = cascades[n].get("tumour_config") or "no tumour stage"
        print(f"\nPer case, {_heading(n)} ({cascades[n].get('liver_config', '')} + {tumour}):\n")
        _cases(cascades[n]["cases"])
    if doc.get("models"):
        _models(doc["models"])
    return 0


def _global_dice_interval(rows: list[dict], what: str) -> tuple[float, float, float]:
    """Global Dice (voxels pooled over cases) and its 95% bootstrap interval over cases."""
    import numpy as np

    from livseg.metrics.bootstrap import CONFIDENCE, N_RESAMPLES, SEED

    inter, pred, ref = (
        np.array([float(r[f"{what}_voxels_{k}"]) for r in rows])
        for k in ("intersection", "pred", "ref")
    )
    idx = np.random.default_rng(SEED).integers(0, len(rows), size=(N_RESAMPLES, len(rows)))
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2 * inter[idx].sum(1) / (pred[idx].sum(1) + ref[idx].sum(1))
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.nanquantile(dice, [alpha, 1 - alpha])
    return 2 * inter.sum() / (pred.sum() + ref.sum()), float(low), float(high)


def _intervals(name: str, rows: list[dict]) -> None:
    """95% bootstrap intervals over the cases (livseg.metrics.bootstrap) of the key numbers."""
    from livseg.metrics.bootstrap import mean_interval

    print(f"\n95% bootstrap intervals over the {len(rows)} cases, {_heading(name)}:\n")
    print("| metric | value | 95% interval |\n|---|---|---|")
    for key, label in (
        ("liver_dice", "Liver Dice per case"),
        ("liver_assd", "Liver ASSD (mm)"),
        ("tumor_dice", "Tumour Dice per case"),
    ):
        iv = mean_interval([float(r[key]) for r in rows])
        print(f"| {label} | {_fmt(iv.mean)} | [{_fmt(iv.low)}, {_fmt(iv.high)}] |")
    for what, label in (("liver", "Liver Dice global"), ("tumor", "Tumour Dice global")):
        if f"{what}_voxels_intersection" in rows[0]:
            value, low, high = _global_dice_interval(rows, what)
            print(f"| {label} | {_fmt(value)} | [{_fmt(low)}, {_fmt(high)}] |")


def _models(models: list[dict]) -> None:
    print("\nTraining time of the fold models (CPU: user + system of the training process):\n")
    print("| fold | configuration | stage | CPU minutes | wall minutes |\n|---|---|---|---|---|")
    for m in models:
        resumed = " (resumed)" if m.get("resumed") else ""
        print(
            f"| {m['fold']} | {m['config']} | {m['stage']} | {m['cpu_minutes']:.1f}{resumed} | "
            f"{m['wall_minutes']:.1f} |"
        )


def _cases(rows: list[dict]) -> None:
    cols = [
        "fold",
        "case",
        "liver_dice",
        "liver_rvd",
        "liver_assd",
        "liver_msd",
        "tumor_dice",
        "lesions_ref",
        "lesion_tp",
        "lesion_fp",
    ]
    have = [c for c in cols if c in rows[0]]
    print("| " + " | ".join(have) + " |\n|" + "---|" * len(have))
    plain = ("fold", "case", "lesions_ref", "lesion_tp", "lesion_fp")
    for r in rows:
        print("| " + " | ".join(str(r[c]) if c in plain else _fmt(r[c]) for c in have) + " |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
