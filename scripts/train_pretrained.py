#!/usr/bin/env python3
"""Train livseg's shipped models and cross-validate them by patient, end to end.

This is the exact procedure behind ``src/livseg/weights/`` and its ``MODEL_CARD.md``:

1. train the shipped configurations (CR-U-Net liver, DenseFCN liver, DenseFCN tumour) on all
   cases with :func:`livseg.train.train` (these weights are shipped);
2. cross-validate them with :func:`livseg.train.cv.cross_validate`, i.e. ``livseg cv
   pretrained_crunet_liver pretrained_densefcn_liver pretrained_densefcn_tumour --folds 5``:
   per fold, train every configuration on the other patients' cases, segment each held-out case
   **at full resolution with the whole cascade** of each liver model (sharing the fold's tumour
   model) exactly as ``livseg segment --model crunet|densefcn`` does, and score the held-out
   predictions with the LiTS metric set.

No model selection uses a held-out case: the fold runs validate only after their last epoch,
so the checkpoint used is the last one.

Usage::

    python scripts/train_pretrained.py --data ../shared/data/lits --out runs/pretrained \\
        [--folds 5] [--device cpu] [--install] [--models crunet_liver densefcn_tumour ...]

Folders: ``OUT/all/<model>/`` (the all-case runs), ``OUT/cv/`` (the ``livseg cv`` folder, with
``cv_summary.json``), ``OUT/cache/`` (the slice cache all of them share). ``--install`` copies
the all-case checkpoints into ``src/livseg/weights/`` and writes ``cv_summary.json`` there with
the cascades named after ``livseg segment --model`` (``crunet``, ``densefcn``). Finished steps in
``--out`` are skipped, so the script can be re-run after an interruption (or after re-training
one model: delete its run folders and ``OUT/cv``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "src" / "livseg" / "weights"

#: shipped model folder -> bundled configuration
SHIPPED = {
    "crunet_liver": "pretrained_crunet_liver",
    "densefcn_liver": "pretrained_densefcn_liver",
    "densefcn_tumour": "pretrained_densefcn_tumour",
}
#: liver configuration -> ``livseg segment --model`` of its cascade
SEGMENT_MODEL = {"pretrained_crunet_liver": "crunet", "pretrained_densefcn_liver": "densefcn"}

log = logging.getLogger("train_pretrained")


def _install(checkpoint: Path, name: str) -> None:
    dst = WEIGHTS / name
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("model.safetensors", "config.json"):
        shutil.copy2(checkpoint / f, dst / f)
    log.info("installed %s -> %s", checkpoint, dst)


def _install_summary(summary: Path) -> None:
    doc = json.loads(summary.read_text(encoding="utf-8"))
    doc["cascades"] = {SEGMENT_MODEL.get(k, k): v for k, v in doc["cascades"].items()}
    (WEIGHTS / "cv_summary.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    log.info("installed %s -> %s", summary, WEIGHTS / "cv_summary.json")


def main() -> int:
    from livseg.train import load_config, train
    from livseg.train.cv import cross_validate

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
        help="shipped models to train and cross-validate (each liver model makes one "
        "cascade; without densefcn_tumour the cascades are liver only)",
    )
    p.add_argument("--install", action="store_true")
    p.add_argument("--skip-cv", action="store_true")
    args = p.parse_args()
    if not args.skip_cv and args.models == ["densefcn_tumour"]:
        p.error("cross-validation needs a liver model: add crunet_liver or densefcn_liver")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cache = args.out / "cache"
    configs = {name: load_config(SHIPPED[name]) for name in args.models}

    # 1. all-case models (shipped)
    for name, config in configs.items():
        run = args.out / "all" / name
        result = train(config, args.data, run, cache=cache, device=args.device, resume=True)
        if args.install:
            _install(result.checkpoint, name)
    if args.skip_cv:
        return 0

    # 2. livseg cv: per-fold models, full-resolution cascades on the held-out cases, LiTS scores
    cv = cross_validate(
        list(configs.values()),
        args.data,
        args.out / "cv",
        args.folds,
        seed=0,
        device=args.device,
        cache=cache,
    )
    if args.install:
        _install_summary(cv.summary_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
