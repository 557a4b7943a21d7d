"""Time ``livseg segment`` end to end against the floor and the previous release, side by side.

For every input, in one run on one machine, each in a fresh process (so start-up, model loading
and peak memory are its own), with the same thread count:

* **floor**: Python starts, reads the CT with ``livseg.io`` and writes an empty label volume in
  its geometry: what no segmentation tool can beat;
* **previous**: ``livseg segment`` of the previous release (``--previous``, a git revision: by
  default v0.10, :data:`PREVIOUS`), run from a temporary git worktree;
* **today**: ``livseg segment`` of this checkout.

Each ``livseg segment`` call writes every output (labels, measurements JSON, lesion CSV, overlay
PNG, HTML report, unless ``--no-overlay``); the per-stage seconds come from its measurements JSON
and ``start`` is the rest of the wall time (interpreter, imports, model loading). Then the
**batch** line: every input in one ``livseg segment`` call (models loaded once), wall time per
case; since v0.11 a batch reads the next case and writes the previous one while it segments one,
so its stage times overlap and ``start`` (the rest) can fall below zero. Ratios are previous /
today (> 1: today is faster) and today / floor. Today's first call is made once, untimed, before
the others: it exports the ONNX networks into the cache (once per installation and model).

Targets (issue #14): a 512 x 512 x ~150 CT in <= 5 s wall and <= 1.5 GB peak RSS on 2 threads;
batch <= 4 s per case; the 207-slice case <= 7 s; on a GPU (``--device cuda``) <= 1 s per CT
after warm-up: the **warm** line (``--warm K``), what each further case of a batch call costs.

Usage::

    python benchmarks/segment_speed.py                         # ../shared/data, 2 threads
    python benchmarks/segment_speed.py --previous HEAD~3 --threads 2 --backend torch
    python benchmarks/segment_speed.py --inputs ct1.nii.gz ct2.nii.gz --no-previous
    python benchmarks/segment_speed.py --inputs ct.nii.gz --no-previous --device cuda --warm 4
    python benchmarks/segment_speed.py --fold 0                 # one fold's models
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
#: v0.10 (90-epoch tumour pairs, tumour closing, torch-free ONNX Runtime path)
PREVIOUS = "ca5ef1d"
STAGES = ("read", "reorient", "coarse", "liver", "postprocess", "tumour", "write", "report")

FLOOR = """
import sys, numpy as np
from livseg.io import read_volume, write_volume
ct = read_volume(sys.argv[1], kind="image")
write_volume(ct.with_array(np.zeros(ct.shape, np.uint8), kind="label"), sys.argv[2])
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GB, stderr tail) of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (err.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{' '.join(cmd[:4])}...: exit {proc.returncode}: {tail}")
    return wall, usage.ru_maxrss / 1024**2, err


def case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def with_src(env: dict[str, str], src: Path) -> dict[str, str]:
    """``env`` with ``src`` first on PYTHONPATH (what was there is kept: carried packages)."""
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))}


def segment(src: Path, inputs: list[Path], opts: list[str], env: dict[str, str]) -> dict:
    """One ``livseg segment`` call of the checkout whose ``src`` folder is given."""
    env = with_src(env, src)
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "livseg.cli", "segment", *map(str, inputs), "-o", out, *opts]
        wall, rss, _ = run(cmd, env)
        stages = {}
        for inp in inputs:
            doc = json.loads((Path(out) / f"{case_name(inp)}_measurements.json").read_text())
            for k, v in doc["extra"]["timings_s"].items():
                stages[k] = stages.get(k, 0.0) + v
    stages["start"] = wall - sum(stages.values())
    return {"wall": wall, "rss": rss, **stages}


def floor(inp: Path, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", FLOOR, str(inp), str(Path(out) / "seg.nii.gz")]
        wall, rss, _ = run(cmd, with_src(env, ROOT / "src"))
    return {"wall": wall, "rss": rss}


def previous_src(rev: str, keep: Path) -> Path:
    """The ``src`` folder of revision ``rev`` in a git worktree under ``keep``."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = keep / f"livseg-{sha}"
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha],
            capture_output=True,
            check=True,
        )
    return tree / "src"


def warm_line(inp: Path, k: int, opts: list[str], env: dict[str, str]) -> str:
    """Today's seconds per case after warm-up: one call segments ``inp`` once, another 1 + k
    times (under other names, models loaded once); the difference over k is what each further
    case costs, start-up, model loading and the first case's warm-up (ONNX, CUDA kernels)
    excluded."""
    with tempfile.TemporaryDirectory() as tmp:
        links = []
        for i in range(k + 1):
            links.append(Path(tmp) / f"warm{i}-{inp.name}")
            links[-1].symlink_to(inp.resolve())
        one = segment(ROOT / "src", links[:1], opts, env)
        more = segment(ROOT / "src", links, opts, env)
    per = {key: (more[key] - one[key]) / k for key in more if key != "rss"}
    per["rss"] = more["rss"]
    return f"warm: {inp.name} {k} more times in one call, seconds per case\n" + line(
        "today", per, None
    )


def _width(stage: str) -> int:
    """Column width of a stage: its name and a space, at least 9."""
    return max(9, len(stage) + 1)


def line(label: str, d: dict, base: dict | None) -> str:
    stages = "".join(f"{d.get(s, 0.0):>{_width(s)}.2f}" for s in ("start", *STAGES))
    ratio = f"{base['wall'] / d['wall']:>8.2f}x" if base else " " * 9
    return f"  {label:<9}{d['wall']:>7.2f}{d['rss']:>7.2f}{stages}{ratio}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    p.add_argument("--inputs", nargs="*", type=Path, help="inputs instead of the data folder's")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--previous", default=PREVIOUS, help="git revision of the previous release")
    p.add_argument("--no-previous", action="store_true", help="skip the previous release")
    p.add_argument("--worktrees", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx", "bf16"))
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--no-batch", action="store_true", help="skip the batch line")
    p.add_argument("--batch-size", type=int, help="livseg segment --batch-size (default its own)")
    today = "today's livseg segment --fold K (repeatable; the previous release runs all folds)"
    p.add_argument("--fold", metavar="K", help=today, type=int, action="append", dest="folds")
    p.add_argument(
        "--warm",
        type=int,
        default=0,
        metavar="K",
        help="also time the first input K more times in one call, after a warm-up case",
    )
    args = p.parse_args(argv)
    inputs = args.inputs or sorted((args.data / "lits").glob("volume-*.nii*"))
    if not inputs:
        print(f"no inputs found under {args.data}", file=sys.stderr)
        return 2
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    opts = ["--device", args.device] + (["--no-overlay"] if args.no_overlay else [])
    if args.batch_size:
        opts += ["--batch-size", str(args.batch_size)]
    today_opts = [*opts, "--backend", args.backend]
    if args.folds:
        today_opts += [a for k in args.folds for a in ("--fold", str(k))]
    prev = None if args.no_previous else previous_src(args.previous, args.worktrees)
    print(
        f"livseg segment, end to end; {cpu_model()}, {args.threads} threads, device {args.device}"
    )
    folds = f", folds {' '.join(map(str, args.folds))}" if args.folds else ""
    print(
        f"today: {ROOT} (backend {args.backend}{folds}); previous: {args.previous if prev else '-'}"
    )
    warm = segment(ROOT / "src", inputs[:1], today_opts, env)  # fills the ONNX export cache
    print(f"(untimed warm-up of today's first call: {warm['wall']:.1f} s, exports included)")
    head = "".join(f"{s:>{_width(s)}}" for s in ("start", *STAGES))
    print(f"  {'':<9}{'wall s':>7}{'RSS GB':>7}{head}{'prev/now':>9}")
    for inp in inputs:
        print(f"{inp.name}")
        base = floor(inp, env)
        print(line("floor", base, None))
        old = segment(prev, [inp], opts, env) if prev else None
        if old:
            print(line("previous", old, None))
        now = segment(ROOT / "src", [inp], today_opts, env)
        print(line("today", now, old) + f"   today/floor {now['wall'] / base['wall']:.1f}x")
    if not args.no_batch and len(inputs) > 1:
        n = len(inputs)
        print(f"batch: {n} inputs in one call, seconds per case")
        old = segment(prev, inputs, opts, env) if prev else None
        now = segment(ROOT / "src", inputs, today_opts, env)
        for label, d in (("previous", old), ("today", now)):
            if d:
                per = {k: v / n for k, v in d.items() if k != "rss"} | {"rss": d["rss"]}
                print(
                    line(
                        label, per, old and {"wall": old["wall"] / n} if label == "today" else None
                    )
                )
    if args.warm > 0:
        print(warm_line(inputs[0], args.warm, today_opts, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
