"""Where the time of a warm ``livseg segment`` case goes, function by function, on any device.

``segment_speed.py`` times whole processes; this profiles what is left once the models are
loaded and warm (the per-case cost of a batch): the models are loaded once, one untimed case
warms them up (ONNX export, cuDNN's algorithm choice, caches), then ``--repeat`` cases of the
first input run under cProfile: segmentation, measurements, the labels written and (unless
``--no-overlay``) the overlay and report. On a GPU every case ends with a device
synchronisation, so the GPU work the host waits for lands in the function that waited.

It prints the machine, seconds per case with the cascade's per-stage split, then the functions
with the most time of their own (``--sort tottime``, the default: the host work that remains)
or the most time including their callees (``--sort cumulative``: which step it belongs to).
``--stats FILE`` also writes the raw profile for ``python -m pstats FILE``.

Usage::

    python benchmarks/profile_segment.py ../shared/data/lits/volume-0.nii.gz
    python benchmarks/profile_segment.py CT.nii.gz --device cuda --repeat 3 --top 40
    python benchmarks/profile_segment.py CT.nii.gz --fold 0 --sort cumulative
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

from segment_speed import STAGES, cpu_model


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ct", help="a CT file or DICOM series folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx", "bf16"))
    p.add_argument("--fold", type=int, action="append", help="only fold K (repeatable)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--repeat", type=int, default=3, help="profiled cases (default 3)")
    p.add_argument("--top", type=int, default=30, help="functions listed (default 30)")
    p.add_argument("--sort", default="tottime", choices=("tottime", "cumulative"))
    p.add_argument("--no-overlay", action="store_true", help="skip the PNG and the report")
    p.add_argument("--stats", type=Path, help="also write the raw profile here")
    return p.parse_args(argv)


def machine(device: str) -> str:
    import torch

    text = f"{cpu_model()}, {torch.get_num_threads()} threads"
    if device != "cpu" and torch.cuda.is_available():
        text += f"; {torch.cuda.get_device_name()}"
    return text


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def one_case(cascade, ct, outdir: Path, overlay: bool) -> tuple[float, dict[str, float]]:
    """(wall seconds, stage seconds) of one case, written into ``outdir``."""
    from livseg.infer.case import segment_ct

    t = time.perf_counter()
    case = segment_ct(cascade, ct, name="case")
    case.save(outdir, overwrite=True, overlay=overlay)
    synchronize()
    return time.perf_counter() - t, dict(case.result.timings)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from livseg.infer.case import SegmentOptions, read_ct

    torch.set_num_threads(args.threads)
    options = SegmentOptions(backend=args.backend, folds=tuple(args.fold) if args.fold else None)
    cascade = options.load(device=args.device)
    ct = read_ct(args.ct)
    device = str(cascade.liver.device)
    print(f"livseg segment, warm cases; {machine(device)}; device {device}")
    print(f"{args.ct}: shape {ct.image.shape}, backend {args.backend}, folds {args.fold or 'all'}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        first, _ = one_case(cascade, ct, out, not args.no_overlay)
        print(f"warm-up case (untimed in the profile): {first:.2f} s")
        profile = cProfile.Profile()
        walls, stages = [], {k: 0.0 for k in STAGES}
        for _ in range(args.repeat):
            profile.enable()
            wall, timings = one_case(cascade, ct, out, not args.no_overlay)
            profile.disable()
            walls.append(wall)
            for k in stages:
                stages[k] += timings.get(k, 0.0) / args.repeat
    split = "  ".join(f"{k} {v:.2f}" for k, v in stages.items())
    mean = sum(walls) / len(walls)
    print(f"per case: {mean:.2f} s (min {min(walls):.2f}, {args.repeat} cases)")
    print(f"  stages (s): {split}  rest {mean - sum(stages.values()):.2f}")
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text).strip_dirs().sort_stats(args.sort)
    stats.print_stats(args.top)
    print(text.getvalue().split("\n", 4)[-1].rstrip())  # the table, without the header lines
    if args.stats:
        stats.dump_stats(args.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
