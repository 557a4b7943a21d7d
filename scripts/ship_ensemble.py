#!/usr/bin/env python3
"""Install the fold models of a ``livseg cv`` run as livseg's shipped fold ensembles.

Cross-validation and shipping are the same runs (as nnU-Net ships its folds): fold ``k``'s model
of every stage was trained on the other patients, scored on the held-out ones, and becomes member
``fold<k>`` of that stage's shipped ensemble, whose probability is the members' mean.

For every configuration of the cross-validation (``splits.json``) and every finished fold
(``fold<k>/fold.json``), the fold's checkpoint is copied to
``src/livseg/weights/<shipped name>/fold<k>/`` (each member of a ``train.members`` ensemble to
``fold<k>-member<i>/``) with its weights stored as float16 (half the
size; the models compute in float32 after loading) and its ``config.json`` unchanged. The
pooled ``cv_summary.json`` is copied next to them as ``cv_summary_cascade.json``.

Usage::

    python scripts/ship_ensemble.py --cv runs/cv11 \\
        --name coarse_liver=coarse_liver --name fine_crunet_liver=crunet_liver_fine \\
        --name tumour_runet=runet_tumour [--dry-run]
    python scripts/ship_ensemble.py --halve crunet_liver --halve densefcn_liver \
        --halve densefcn_tumour       # the papers' models as float16 (the 60 MB budget)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "src" / "livseg" / "weights"

log = logging.getLogger("ship_ensemble")


def _checkpoint(cv: Path, fold: int, recorded: Path) -> Path:
    """A fold model's checkpoint folder: ``livseg cv`` records it as given to ``--out`` (relative
    to where it ran), so a relative one is found from its ``fold<k>/`` part inside ``cv``."""
    if recorded.is_absolute():
        return recorded
    parts = recorded.parts
    name = f"fold{fold}"
    return cv.joinpath(*parts[parts.index(name) :]) if name in parts else cv / recorded


def _fold_checkpoints(ckpt: Path, fold: int) -> list[tuple[str, Path]]:
    """(member name, checkpoint folder) of fold ``fold``'s model: ``fold<k>`` for one network,
    ``fold<k>-member<i>`` for each member of a ``train.members`` ensemble."""
    from livseg.infer.pretrained import ensemble_members

    members = ensemble_members(ckpt)
    if members == [ckpt]:
        return [(f"fold{fold}", ckpt)]
    return [(f"fold{fold}-{p.name}", p) for p in members]


def _half(src: Path, dst: Path) -> None:
    """Copy a checkpoint folder with float32 weights stored as float16."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(src / "model.safetensors"))
    half = {k: v.half() if v.dtype == torch.float32 else v for k, v in weights.items()}
    dst.mkdir(parents=True, exist_ok=True)
    save_file(half, str(dst / "model.safetensors"))
    shutil.copy2(src / "config.json", dst / "config.json")


def _finished_folds(cv: Path) -> list[dict]:
    docs = []
    for fold_file in sorted(cv.glob("fold*/fold.json")):
        docs.append(json.loads(fold_file.read_text(encoding="utf-8")))
    return sorted(docs, key=lambda d: d["fold"])


def install(cv: Path, names: dict[str, str], dry_run: bool) -> None:
    """Install every finished fold's model of each configuration under its shipped name."""
    folds = _finished_folds(cv)
    if not folds:
        raise SystemExit(f"{cv}: no finished fold (fold*/fold.json)")
    for config, shipped in names.items():
        members = [(d["fold"], m) for d in folds for m in d["models"] if m["config"] == config]
        if not members:
            raise SystemExit(f"{cv}: no model of configuration {config!r}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{shipped}-", dir=WEIGHTS))
        for k, model in members:
            ckpt = _checkpoint(cv, k, Path(model["checkpoint"]))
            for name, src in _fold_checkpoints(ckpt, k):
                _half(src, tmp / name)
                log.info("%s %s <- %s", shipped, name, src)
        if dry_run:
            shutil.rmtree(tmp)
            continue
        final = WEIGHTS / shipped
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    summary = cv / "cv_summary.json"
    if summary.is_file() and not dry_run:
        shutil.copy2(summary, WEIGHTS / "cv_summary_cascade.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cv", type=Path, help="the livseg cv folder")
    p.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="CONFIG=SHIPPED",
        help="configuration name -> shipped model folder (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="check and convert, install nothing")
    p.add_argument(
        "--halve",
        action="append",
        default=[],
        metavar="SHIPPED",
        help="also store an installed single-checkpoint model's weights as float16 (repeatable)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    names = dict(item.split("=", 1) for item in args.name)
    if names:
        install(args.cv, names, args.dry_run)
    for name in args.halve:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=WEIGHTS))
        _half(WEIGHTS / name, tmp)
        shutil.rmtree(WEIGHTS / name)
        tmp.rename(WEIGHTS / name)
        log.info("%s stored as float16", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
