"""Speed and memory of livseg's LiTS metric set against MedPy 0.5.2.

For every case, two fresh subprocesses are started, one per side, so that their peak memory is
independent:

* **livseg**: ``livseg.metrics.evaluate_case`` - the *whole* metric set (liver and tumour Dice,
  Jaccard, VOE, RVD, ASSD, RMSD, MSD, lesion components / merge / detection at two thresholds,
  per-lesion scores, tumour burden);
* **MedPy**: only ``dc``, ``assd`` and ``hd`` (``connectivity=2``, ``voxelspacing`` from the
  reference) for liver and tumour (tumour skipped when a side is empty, MedPy cannot score it).

Memory is the process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
which sees numpy's C allocations, unlike tracemalloc in some cases), reported as the total peak
and as the increase over the peak after the two input arrays were built ("extra").

Cases: the real segmentations of ``../shared/data/lits`` (prediction = the reference perturbed:
liver dilated by one voxel and shifted by two voxels in x, tumour shifted by one voxel in y) and
a synthetic 512x512x500 pair (ellipsoid liver with spherical tumours; prediction = slightly
different ellipsoid and spheres). ``--quick``: real cases 2 and 3 and a 256x256x128 synthetic.

Usage: ``python benchmarks/metrics_speed.py [--quick] [--data DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("LIVSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "lits"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _synthetic(shape, perturbed: bool):
    """Ellipsoid liver (label 1) with spherical tumours (label 2), built slice by slice."""
    z, y, x = shape
    lab = np.zeros(shape, np.uint8)
    c = np.array([z * 0.5, y * 0.5, x * 0.45])
    r = np.array([z * 0.35, y * 0.30, x * 0.33])
    tumours = [
        (np.array([z * 0.45, y * 0.45, x * 0.40]), min(shape) * 0.06),
        (np.array([z * 0.60, y * 0.55, x * 0.55]), min(shape) * 0.04),
        (np.array([z * 0.35, y * 0.60, x * 0.35]), min(shape) * 0.03),
    ]
    if perturbed:
        c = c + np.array([1.0, 2.0, -3.0])
        r = r * np.array([1.02, 0.98, 1.03])
        tumours = [(tc + np.array([0.0, 1.0, 1.0]), tr * 1.1) for tc, tr in tumours[:2]] + [
            (np.array([z * 0.55, y * 0.35, x * 0.30]), min(shape) * 0.02)
        ]  # a false positive
    yy, xx = np.ogrid[:y, :x]
    for k in range(z):
        q = ((k - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2
        sl = lab[k]
        sl[q <= 1] = 1
        for tc, tr in tumours:
            sl[((k - tc[0]) ** 2 + (yy - tc[1]) ** 2 + (xx - tc[2]) ** 2) <= tr**2] = 2
    return lab


def _load_case(spec: str):
    """(pred, ref, spacing) for 'real:PATH' or 'synthetic:Z,Y,X'."""
    kind, arg = spec.split(":", 1)
    if kind == "synthetic":
        shape = tuple(int(v) for v in arg.split(","))
        return _synthetic(shape, True), _synthetic(shape, False), (1.0, 0.8, 0.8)
    import nibabel as nib
    from scipy import ndimage

    img = nib.load(arg)
    ref = np.ascontiguousarray(np.asarray(img.dataobj).astype(np.uint8).transpose(2, 1, 0))
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3][::-1])
    liver = np.roll(ndimage.binary_dilation(ref >= 1), 2, axis=2)
    pred = liver.astype(np.uint8)
    pred[np.roll(ref == 2, 1, axis=1) & liver] = 2
    return pred, ref, spacing


def _worker(side: str, spec: str) -> None:
    pred, ref, spacing = _load_case(spec)
    base = _peak_mb()
    t0 = time.perf_counter()
    if side == "livseg":
        from livseg.metrics import evaluate_case

        r = evaluate_case(pred, ref, spacing)
        values = {
            "liver_dice": r.liver.dice,
            "liver_assd": r.liver.assd,
            "liver_msd": r.liver.msd,
            "tumor_dice": r.tumor.dice,
            "tumor_assd": r.tumor.assd,
            "tumor_msd": r.tumor.msd,
        }
    else:
        from medpy.metric import binary as mb

        values = {}
        for name, p, g in (("liver", pred >= 1, ref >= 1), ("tumor", pred == 2, ref == 2)):
            values[f"{name}_dice"] = mb.dc(p, g)
            if p.any() and g.any():
                values[f"{name}_assd"] = mb.assd(p, g, voxelspacing=spacing, connectivity=2)
                values[f"{name}_msd"] = mb.hd(p, g, voxelspacing=spacing, connectivity=2)
    seconds = time.perf_counter() - t0
    peak = _peak_mb()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": peak,
                "extra_mb": peak - base,
                "values": {k: float(v) for k, v in values.items()},
            }
        )
    )


def _run(side: str, spec: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", side, spec],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return f"{model}, {os.cpu_count()} logical cores ({usable} usable), Python {platform.python_version()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="real cases 2, 3 + 256x256x128 synthetic")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LiTS folder")
    ap.add_argument("--worker", nargs=2, metavar=("SIDE", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0

    specs = []
    names = (
        ["segmentation-2", "segmentation-3"]
        if args.quick
        else [f"segmentation-{i}" for i in range(5)]
    )
    for name in names:
        for ext in (".nii.gz", ".nii"):
            if (args.data / f"{name}{ext}").exists():
                specs.append((name, f"real:{args.data / (name + ext)}"))
                break
    if not specs:
        print(f"note: no real case found in {args.data}; synthetic only")
    shape = (128, 256, 256) if args.quick else (500, 512, 512)
    specs.append(
        (f"synthetic {shape[2]}x{shape[1]}x{shape[0]}", "synthetic:" + ",".join(map(str, shape)))
    )

    print(f"machine: {_machine()}")
    print("memory: peak RSS of a fresh process per side (ru_maxrss); 'extra' = above the inputs")
    print(
        "livseg = whole LiTS metric set; MedPy = dc + assd + hd (connectivity 2) for liver and "
        "tumour\n"
    )
    head = (
        f"{'case':<26} {'livseg s':>9} {'MedPy s':>9} {'ratio':>7} {'livseg MB':>10} "
        f"{'MedPy MB':>9} {'livseg extra':>12} {'MedPy extra':>11} {'max |diff|':>10}"
    )
    print(head)
    print("-" * len(head))
    tot_l = tot_m = 0.0
    for name, spec in specs:
        lv = _run("livseg", spec)
        mp = _run("medpy", spec)
        diffs = [abs(lv["values"][k] - v) for k, v in mp["values"].items()]
        tot_l += lv["seconds"]
        tot_m += mp["seconds"]
        print(
            f"{name:<26} {lv['seconds']:>9.2f} {mp['seconds']:>9.2f} "
            f"{mp['seconds'] / lv['seconds']:>6.1f}x {lv['peak_mb']:>10.0f} "
            f"{mp['peak_mb']:>9.0f} {lv['extra_mb']:>12.0f} {mp['extra_mb']:>11.0f} "
            f"{max(diffs):>10.1e}",
            flush=True,
        )
    print("-" * len(head))
    print(f"{'total':<26} {tot_l:>9.2f} {tot_m:>9.2f} {tot_m / tot_l:>6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
