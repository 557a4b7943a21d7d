"""Parameter counts and forward time per slice of every livseg network and variant.

Usage::

    python benchmarks/models.py            # 256x256 and 512x512, 3 timed runs each
    python benchmarks/models.py --quick    # 256x256 only, 1 timed run, no 512 variants
    python benchmarks/models.py --device cuda --sizes 256 512 --repeats 10

Widths are the paper defaults where a paper gives them, ours otherwise (stated per row):
U-Net base 64 (Ronneberger), R-U-Net / CR-U-Net base 32 (not given by the paper; "w16" rows are
the CPU-training width), DenseFCN k=16, first conv 48, 4 levels, 4 layers per block (not given by
the paper, SPEC defaults). Times are for one slice (batch 1) in eval mode under
``torch.inference_mode``: the median of ``--repeats`` runs after one warm-up run. GMAC = 10^9 multiply-accumulates of the
convolutions per slice, a timing-free measure of cost. The liver
DenseFCN (SBU) is timed on its 256x256 input only (its output is 512x512); the CR-U-Net time
includes both levels and the intermediate morphology.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from livseg.models import build_model

# (row name, model name, options, note, sizes it runs at or None for all)
VARIANTS: list[tuple[str, str, dict, str, tuple[int, ...] | None]] = [
    ("unet", "unet", {}, "Ronneberger U-Net, depth 4, base 64", None),
    ("runet-d4", "runet", {"depth": 4}, "R-U-Net level 1 (35 layers), base 32", None),
    ("runet-d5", "runet", {"depth": 5}, "R-U-Net level 2 (43 layers), base 32", None),
    ("crunet (d)", "crunet", {}, "CR-U-Net d4 + d5, base 32, concat input", None),
    ("crunet (a)", "crunet", {"level2_depth": 4}, "variant (a): both levels depth 4", None),
    ("crunet (b)", "crunet", {"intermediate": False}, "variant (b): no morphology", None),
    ("crunet masked", "crunet", {"level2_input": "masked"}, "level-2 input = masked CT", None),
    ("crunet w16", "crunet", {"base_width": 16}, "CPU-training width 16", None),
    ("densefcn liver", "densefcn", {"sbu": True}, "1 ch in, SBU: 256 in -> 512 out", (256,)),
    ("densefcn tumour", "densefcn", {"in_channels": 3}, "3 HU windows in, no SBU", None),
]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else platform.processor()."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the convolutions in one forward pass (hooks on conv modules)."""
    total = 0

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        cin = inputs[0].shape[1] // module.groups
        if isinstance(module, torch.nn.ConvTranspose2d):
            total += inputs[0].numel() * module.out_channels // module.groups * kh * kw
        else:
            total += output.numel() * cin * kh * kw

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return total


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward pass (after a warm-up pass)."""

    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    times = []
    with torch.inference_mode():
        model(x)
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256x256 only, 1 timed run")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="slice sizes (px)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--no-time", action="store_true", help="parameters and GMACs only")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([256] if args.quick else [256, 512])
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU: {cpu_model()}")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    print(f"device {device}, batch 1, median of {repeats} run(s) after 1 warm-up\n")
    header = f"{'model':<17}{'params':>12}" + "".join(
        f"{f'{s}px GMAC':>12}{f'{s}px (s)':>11}" for s in sizes
    )
    print(header + "   note")
    results = []
    for row, name, opts, note, only in VARIANTS:
        model = build_model(name, **opts).eval().to(device)
        n_params = sum(p.numel() for p in model.parameters())
        cells, timings, macs = [], {}, {}
        for size in sizes:
            if only is not None and size not in only:
                cells.append(f"{'-':>12}{'-':>11}")
                continue
            x = torch.rand(1, model.in_channels, size, size, device=device)
            macs[size] = count_macs(model, x)
            if args.no_time:
                cells.append(f"{macs[size] / 1e9:>12.1f}{'-':>11}")
                continue
            seconds = time_forward(model, x, repeats)
            timings[size] = seconds
            cells.append(f"{macs[size] / 1e9:>12.1f}{seconds:>11.3f}")
        print(f"{row:<17}{n_params:>12,}" + "".join(cells) + f"   {note}", flush=True)
        results.append(
            {
                "row": row,
                "model": name,
                "options": opts,
                "params": n_params,
                "gmacs": {k: v / 1e9 for k, v in macs.items()},
                "seconds": timings,
            }
        )
        del model
    if args.json:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": cpu_model(),
            "device": str(device),
            "repeats": repeats,
        }
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
