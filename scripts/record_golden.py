#!/usr/bin/env python3
"""Record the shipped livseg cascade's measurements on ``lits/volume-1`` for the golden test.

Run once after installing new weights (``scripts/ship_ensemble.py``); the file is
``tests/golden/livseg_cascade_volume-1.json`` and ``tests/test_shipped_models.py`` checks that
the cascade keeps reproducing it.

Usage::

    python scripts/record_golden.py ../shared/data/lits [--model crunet]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "livseg_cascade_volume-1.json"


def main(argv: list[str] | None = None) -> int:
    from livseg.infer import Cascade
    from livseg.io import read_volume
    from livseg.report.measurements import measure

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lits", type=Path, help="the LiTS folder holding volume-1.nii.gz")
    p.add_argument("--model", default="crunet")
    args = p.parse_args(argv)
    image = read_volume(args.lits / "volume-1.nii.gz", kind="image")
    result = Cascade.load(args.model, paper=False, device="cpu").segment(image)
    labels = result.labels.array
    m = measure(result.labels)
    doc = {
        "case": "lits/volume-1",
        "model": args.model,
        "liver_voxels": int(np.count_nonzero(labels >= 1)),
        "tumour_voxels": int(np.count_nonzero(labels == 2)),
        "liver_volume_ml": m.liver_volume_ml,
        "tumour_volume_ml": m.tumour_volume_ml,
        "lesion_count": m.lesion_count,
    }
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
