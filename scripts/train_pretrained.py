#!/usr/bin/env python3
"""Train livseg's shipped models and cross-validate them by patient, end to end.

This is the exact procedure behind ``src/livseg/weights/`` and its ``MODEL_CARD.md``:

1. train the three shipped configurations (CR-U-Net liver, DenseFCN liver, DenseFCN tumour) on
   all cases (these weights are shipped);
2. train the same configurations once per fold of a k-fold split by patient;
3. segment every held-out case **at full resolution with the whole cascade**, once per liver
   model (the fold's liver model -> post-processing -> the fold's tumour model), exactly as
   ``livseg segment --model crunet|densefcn`` does, and score each cascade's held-out predictions
   together with the LiTS metric set (``livseg evaluate``).

No model selection uses a held-out case: the configurations validate only after their last
epoch, so the checkpoint used is the last one.

Usage::

    python scripts/train_pretrained.py --data ../shared/data/lits --out runs/pretrained \\
        [--folds 5] [--device cpu] [--install] [--models crunet_liver densefcn_tumour ...]

``--install`` copies the all-case checkpoints into ``src/livseg/weights/`` and writes
``cv_summary.json`` there. Steps already finished in ``--out`` are skipped, so the script can be
re-run after an interruption (or after re-training one model: delete its run folders).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: shipped name -> (bundled config, run folder under --out, checkpoint inside a run folder)
SHIPPED = {
    "crunet_liver": ("pretrained_crunet_liver", "liver", "level2/best"),
    "densefcn_liver": ("pretrained_densefcn_liver", "densefcn_liver", "best"),
    "densefcn_tumour": ("pretrained_densefcn_tumour", "tumour", "best"),
}
#: ``--model`` of livseg segment -> shipped liver model
CASCADES = {"crunet": "crunet_liver", "densefcn": "densefcn_liver"}
TUMOUR = "densefcn_tumour"

log = logging.getLogger("train_pretrained")


def _train(
    config: str, data: Path, out: Path, cache: Path, device: str, fold: int | None, folds: int
) -> None:
    if (out / "done.json").exists():
        log.info("skip %s (done)", out)
        return
    cmd = [
        sys.executable,
        "-m",
        "livseg.cli",
        "train",
        config,
        "--data",
        str(data),
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--device",
        device,
    ]
    if fold is not None:
        cmd += ["--fold", str(fold), "--folds", str(folds)]
    if out.exists():
        cmd.append("--resume")
    log.info("$ %s", " ".join(cmd))
    t0 = time.time()
    subprocess.run(cmd, check=True)
    (out / "done.json").write_text(json.dumps({"seconds": time.time() - t0, "command": cmd}))


def _run_dir(out: Path, name: str, run: str) -> Path:
    return out / SHIPPED[name][1] / run


def _checkpoint(out: Path, name: str, run: str) -> Path:
    return _run_dir(out, name, run) / SHIPPED[name][2]


def _cross_validate(args: argparse.Namespace, cascade: str) -> dict:
    """Segment each held-out case with the fold's ``cascade``; score all of them together."""
    from livseg.infer import Cascade
    from livseg.io import read_volume, write_volume
    from livseg.io.datasets import discover_cases
    from livseg.metrics import evaluate_folders, write_results

    out, liver = args.out, CASCADES[cascade]
    cases = {c.case_id: c for c in discover_cases(args.data)}
    pred_dir = out / "cv_predictions" / cascade
    pred_dir.mkdir(parents=True, exist_ok=True)
    timing = {}
    for k in range(args.folds):
        splits = json.loads((_run_dir(out, liver, f"fold-{k}") / "splits.json").read_text())
        held_out = splits["folds"][k]["val"] if "folds" in splits else splits["val"]
        model = Cascade.load(
            cascade,
            liver_model=_checkpoint(out, liver, f"fold-{k}"),
            tumour_model=_checkpoint(out, TUMOUR, f"fold-{k}"),
            device=args.device,
        )
        for cid in held_out:
            case = cases[cid]
            target = pred_dir / case.label.name
            if target.exists():
                continue
            t0 = time.time()
            result = model.segment(read_volume(case.image, kind="image"))
            write_volume(result.labels, target, reference=case.image)
            timing[cid] = time.time() - t0
            log.info("%s fold %d: %s segmented in %.1f s", cascade, k, cid, timing[cid])
    result = evaluate_folders(pred_dir, args.data)
    write_results(result, out / "cv_scores" / cascade, overwrite=True)
    log.info("%s cross-validated summary: %s", cascade, json.dumps(result.summary, default=float))
    return {
        "liver_config": SHIPPED[liver][0],
        "tumour_config": SHIPPED[TUMOUR][0],
        "summary": result.summary,
        "cases": result.rows(),
        "segment_seconds": timing,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--models",
        nargs="+",
        choices=sorted(SHIPPED),
        default=sorted(SHIPPED),
        help="shipped models to train and cross-validate (a cascade is "
        "cross-validated when its liver model is listed; both need densefcn_tumour)",
    )
    p.add_argument("--install", action="store_true")
    p.add_argument("--skip-cv", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out, cache = args.out, args.out / "cache"

    # 1. all-case models (shipped)
    for name in args.models:
        _train(
            SHIPPED[name][0],
            args.data,
            _run_dir(out, name, "all"),
            cache,
            args.device,
            None,
            args.folds,
        )
    if args.install:
        weights = REPO / "src" / "livseg" / "weights"
        for name in args.models:
            src = _checkpoint(out, name, "all")
            dst = weights / name
            dst.mkdir(parents=True, exist_ok=True)
            for f in ("model.safetensors", "config.json"):
                shutil.copy2(src / f, dst / f)
            log.info("installed %s -> %s", src, dst)
    if args.skip_cv:
        return 0

    # 2. per-fold models
    for k in range(args.folds):
        for name in args.models:
            _train(
                SHIPPED[name][0],
                args.data,
                _run_dir(out, name, f"fold-{k}"),
                cache,
                args.device,
                k,
                args.folds,
            )

    # 3. full-resolution cascades on each held-out case, scored together
    summary = {"folds": args.folds, "cascades": {}}
    for cascade, liver in CASCADES.items():
        if liver in args.models:
            summary["cascades"][cascade] = _cross_validate(args, cascade)
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if args.install:
        shutil.copy2(
            out / "cv_summary.json", REPO / "src" / "livseg" / "weights" / "cv_summary.json"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
