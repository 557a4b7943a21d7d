#!/usr/bin/env python3
"""Per held-out case of a ``livseg cv`` run: liver labelled more than 2 cm outside the liver.

Dice hides a heart or a kidney labelled liver when the liver itself is large; the model card
reports, for every held-out case, the volume (ml) of the predicted liver (label >= 1) lying more
than ``--distance`` mm from the reference liver (:func:`livseg.metrics.overlap.
far_false_positive_ml`), read from the predictions the cross-validation wrote.

Usage::

    python scripts/cv_far_labels.py runs/cv11 [--distance 20]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from livseg.io import read_volume
    from livseg.metrics.overlap import far_false_positive_ml

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cv", type=Path, help="the livseg cv folder")
    p.add_argument("--distance", type=float, default=20.0, help="mm (default 20)")
    p.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        help="the folder livseg cv ran in: the relative prediction and reference paths of its "
        "scores resolve against it (default: the current folder)",
    )
    args = p.parse_args(argv)

    def resolve(path: str) -> Path:
        return Path(path) if Path(path).is_absolute() else args.root / path

    doc = json.loads((args.cv / "cv_summary.json").read_text(encoding="utf-8"))
    print(f"| cascade | fold | case | liver > {args.distance:g} mm outside the liver (ml) |")
    print("|---|---|---|---|")
    for name, cascade in doc["cascades"].items():
        fold = {r["case"]: r["fold"] for r in cascade["cases"]}
        with open(args.cv / "scores" / name / "per_case.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:
            row["fold"] = fold[row["case"]]
            pred = read_volume(resolve(row["prediction"]), kind="label")
            ref = read_volume(resolve(row["reference"]), kind="label")
            ml = far_false_positive_ml(pred.array >= 1, ref.array >= 1, ref.spacing, args.distance)
            print(f"| {name} | {row['fold']} | {row['case']} | {ml:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
