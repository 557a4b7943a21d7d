"""Speed of ``livseg evaluate`` against the read-only floor and MedPy 0.5.2, in one run.

Data: the 8 pairs of ``tests/lits_perturb.py`` (real LiTS reference segmentations from
``../shared/data/lits`` and predictions made from them by eroding/dilating/shifting the liver,
perturbing, dropping, splitting and merging lesions, adding false positives), written as
``.nii.gz`` into a temporary folder outside the repository (deleted at the end).

Three timings over the same 16 files, each the best of ``--repeat`` runs (wall clock, one process,
one thread of Python; numpy's own threads as the environment sets them, printed):

* **floor**: reading the 16 files and nothing else (``numpy.asarray(nibabel.load(f).dataobj)``);
* **livseg**: what ``livseg evaluate`` does: :func:`livseg.metrics.evaluate_folders` (pairing,
  reading with geometry checks, the whole LiTS metric set of every case: liver and tumour Dice,
  Jaccard, VOE, RVD, ASSD, RMSD, MSD, lesion matching and detection at two thresholds, per-lesion
  scores, tumour burden), the bootstrap confidence intervals, and writing ``per_case.csv`` and
  ``summary.json``;
* **MedPy**: reading the files with nibabel, then MedPy's ``dc``, ``assd`` and ``hd``
  (``connectivity=2``, ``voxelspacing`` from the header) of the liver and the tumour (tumour
  skipped when a side is empty: MedPy cannot score it). Run once (it takes minutes).

The agreement column is the largest |livseg - MedPy| over those values. Other processes share
the machine: the load average is printed before and after; compare ratios from one run.

Usage: ``python benchmarks/metrics_speed.py [--quick] [--repeat N] [--data DIR]``
(``--quick``: the first 2 pairs; MedPy still runs on them.)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("LIVSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "lits"
sys.path.insert(0, str(REPO / "tests"))  # the perturbation helper shared with the tests

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in THREAD_VARS)
    return (
        f"{model}; {os.cpu_count()} logical cores ({usable} usable); Python "
        f"{platform.python_version()}, numpy {np.__version__}; one process, {threads}"
    )


def _write_pairs(data: Path, out: Path, count: int) -> tuple[Path, Path]:
    from lits_perturb import PAIRS, perturb

    from livseg.io import read_volume, write_volume

    ref_dir, pred_dir = out / "ref", out / "pred"
    for case, variant in PAIRS[:count]:
        vol = read_volume(data / f"segmentation-{case}.nii.gz", kind="label")
        name = f"case{case}{variant}.nii.gz"
        write_volume(vol, ref_dir / name)
        write_volume(vol.with_array(perturb(vol.array, case, variant)), pred_dir / name)
    return pred_dir, ref_dir


def _floor(files: list[Path]) -> None:
    import nibabel as nib

    for f in files:
        np.asarray(nib.load(f).dataobj)


def _livseg(pred_dir: Path, ref_dir: Path, out: Path):
    from livseg.metrics import evaluate_folders, write_results

    result = evaluate_folders(pred_dir, ref_dir)
    write_results(result, out, overwrite=True)  # summary.json computes the intervals
    return result


def _medpy(pred_dir: Path, ref_dir: Path) -> dict[str, dict[str, float]]:
    import nibabel as nib
    from medpy.metric import binary as mb

    out = {}
    for ref_path in sorted(ref_dir.iterdir()):
        ref_img = nib.load(ref_path)
        ref = np.asarray(ref_img.dataobj)
        pred = np.asarray(nib.load(pred_dir / ref_path.name).dataobj)
        spacing = ref_img.header.get_zooms()[:3]
        values = {}
        for name, p, g in (("liver", pred >= 1, ref >= 1), ("tumor", pred == 2, ref == 2)):
            values[f"{name}_dice"] = mb.dc(p, g)
            if p.any() and g.any():
                values[f"{name}_assd"] = mb.assd(p, g, voxelspacing=spacing, connectivity=2)
                values[f"{name}_msd"] = mb.hd(p, g, voxelspacing=spacing, connectivity=2)
        out[ref_path.name.split(".")[0]] = values
    return out


def _best(fn, repeat: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def _agreement(result, medpy: dict[str, dict[str, float]]) -> float:
    worst = 0.0
    for case in result.cases:
        for key, value in medpy[case.case_id].items():
            structure, metric = key.split("_")
            ours = getattr(getattr(case, structure), metric)
            worst = max(worst, abs(ours - value))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the first 2 pairs only")
    ap.add_argument("--repeat", type=int, default=3, help="runs of floor and livseg (best kept)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LiTS folder")
    args = ap.parse_args(argv)
    if not (args.data / "segmentation-0.nii.gz").exists():
        print(f"no LiTS segmentations in {args.data}; nothing to measure")
        return 1
    count = 2 if args.quick else 8
    print(f"machine: {_machine()}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="livseg-bench-") as tmp:
        pred_dir, ref_dir = _write_pairs(args.data, Path(tmp), count)
        files = sorted(ref_dir.iterdir()) + sorted(pred_dir.iterdir())
        t_floor, _ = _best(lambda: _floor(files), args.repeat)
        t_livseg, result = _best(lambda: _livseg(pred_dir, ref_dir, Path(tmp) / "out"), args.repeat)
        t0 = time.perf_counter()
        medpy = _medpy(pred_dir, ref_dir)
        t_medpy = time.perf_counter() - t0
    print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"\n{count} real pairs, {len(files)} files; wall-clock seconds (best of {args.repeat})")
    head = f"{'':<34} {'seconds':>9} {'x floor':>9} {'MedPy / it':>11}"
    print(head)
    print("-" * len(head))
    print(
        f"{'floor (read the files only)':<34} {t_floor:>9.2f} {1.0:>9.2f} {t_medpy / t_floor:>10.0f}x"
    )
    print(
        f"{'livseg evaluate (all + CIs)':<34} {t_livseg:>9.2f} {t_livseg / t_floor:>9.2f} "
        f"{t_medpy / t_livseg:>10.0f}x"
    )
    print(f"{'MedPy dc+assd+hd (liver, tumour)':<34} {t_medpy:>9.2f} {t_medpy / t_floor:>9.2f}")
    print(f"\nlargest |livseg - MedPy| over Dice, ASSD, HD: {_agreement(result, medpy):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
