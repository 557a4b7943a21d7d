"""Time ``livseg segment`` end to end (read -> write) on the real cases, on CPU.

Each case runs in a fresh subprocess (so its peak RSS is its own) through the same library call
as the CLI (:func:`livseg.infer.segment_case` with a cascade loaded once per process) and the
per-stage seconds reported by the library (read, reorient, liver, postprocess, tumour, write,
report) are printed with the peak resident memory. Target (issue): <= 30 s and <= 4 GB for a
512x512x~130 volume on 2 cores.

Usage::

    python benchmarks/segment_speed.py                       # shipped models, ../shared/data
    python benchmarks/segment_speed.py --liver-model RUN/best --tumour-model RUN2/best
    python benchmarks/segment_speed.py --data DIR --threads 2 --model densefcn
    python benchmarks/segment_speed.py --cascade paper       # the papers' cascade
    python benchmarks/segment_speed.py --random-init -O data.size=256   # no weights needed

``--random-init`` builds randomly initialised checkpoints from the bundled configurations
(``crunet_mdice`` or ``densefcn_liver``, and ``densefcn_tumour``; ``-O`` overrides apply to both):
the speed of a network does not depend on its weights.

Inputs: ``DIR/lits/volume-*.nii.gz`` and the DICOM series ``DIR/dicom/*/ct-*`` (override
with ``--inputs``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("read", "reorient", "coarse", "liver", "postprocess", "tumour", "write", "report")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _one(args: argparse.Namespace) -> None:
    """Child process: segment one input, print a JSON line with timings and peak RSS."""
    import torch

    torch.set_num_threads(args.threads)
    from livseg.infer import Cascade, segment_case

    t0 = time.perf_counter()
    cascade = Cascade.load(
        args.model,
        liver_model=args.liver_model,
        tumour_model=args.tumour_model,
        paper=args.paper,
        device="cpu",
        batch_size=args.batch_size,
        tta=args.tta,
    )
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        case = segment_case(cascade, args.one, out, overlay=not args.no_overlay)
        total = time.perf_counter() - t0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "input": str(args.one),
                "shape": list(case.result.labels.shape),
                "load_models": load_s,
                "total": total,
                **case.timings,
                "liver_found": case.measurements.liver_found,
                "peak_rss_gb": rss_kb / 1024**2,
            }
        )
    )


def _random_checkpoints(args: argparse.Namespace, root: Path) -> tuple[Path, Path]:
    from livseg.models import build_model
    from livseg.train.checkpoint import save_checkpoint
    from livseg.train.config import load_config

    out = []
    for name in ("crunet_mdice" if args.model == "crunet" else "densefcn_liver", "densefcn_tumour"):
        cfg = load_config(name, overrides=args.override)
        out.append(
            save_checkpoint(root / name, build_model(cfg.model.name, **cfg.model.options), cfg)
        )
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    p.add_argument("--inputs", nargs="*", type=Path, help="inputs instead of the data folder's")
    p.add_argument("--model", default="crunet", choices=("crunet", "densefcn"))
    p.add_argument(
        "--cascade",
        choices=("livseg", "paper"),
        default=None,
        help="livseg's cascade (coarse stage + fold ensembles) or the papers' (default: livseg "
        "segment's default)",
    )
    p.add_argument("--liver-model", default=None)
    p.add_argument("--tumour-model", default=None)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tta", action="store_true")
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="random checkpoints from the bundled configs (no weights needed)",
    )
    p.add_argument(
        "-O",
        "--override",
        action="append",
        default=[],
        help="config override for --random-init, e.g. data.size=256",
    )
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from livseg.infer.pretrained import DEFAULT_PAPER

    args.paper = DEFAULT_PAPER if args.cascade is None else args.cascade == "paper"
    if args.one is not None:
        _one(args)
        return 0
    inputs = args.inputs or (
        sorted((args.data / "lits").glob("volume-*.nii*"))
        + sorted((args.data / "dicom").glob("*/ct-*"))
    )
    if not inputs:
        print(f"no inputs found under {args.data}", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory()
    if args.random_init:
        args.liver_model, args.tumour_model = _random_checkpoints(args, Path(tmp.name))
    fwd = [
        "--model",
        args.model,
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
    ]
    for opt in ("liver_model", "tumour_model"):
        if getattr(args, opt):
            fwd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    fwd += ["--cascade", "paper" if args.paper else "livseg"]
    fwd += ["--tta"] if args.tta else []
    fwd += ["--no-overlay"] if args.no_overlay else []
    header = f"{'case':<28}{'shape (z,y,x)':>16}" + "".join(f"{s:>12}" for s in STAGES)
    print(header + f"{'total':>9}{'RSS GB':>8}")
    for inp in inputs:
        r = subprocess.run(
            [sys.executable, __file__, "--one", str(inp), *fwd], capture_output=True, text=True
        )
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{inp.name:<28} FAILED: {last}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        shape = "x".join(map(str, d["shape"]))
        print(
            f"{inp.name:<28}{shape:>16}"
            + "".join(f"{d.get(s, 0.0):>12.2f}" for s in STAGES)
            + f"{d['total']:>9.2f}{d['peak_rss_gb']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
