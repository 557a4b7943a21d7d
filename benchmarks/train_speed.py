"""Training speed benchmark: slices/s and peak memory per model, slice size and device.

Each measurement runs in a fresh subprocess (so the CPU peak memory, the process's maximum
resident set size, belongs to that model alone): build the model and loss of a bundled
configuration, then time ``--iterations`` Adam steps (forward, loss, backward, step) on random
slices after ``--warmup`` untimed ones, with the configuration's batch size unless
``--batch-size`` is given. CUDA runs use autocast + GradScaler like the trainer and report
``torch.cuda.max_memory_allocated``; CUDA is skipped when absent.

Models: ``unet``, ``runet``, ``crunet_level1`` and ``crunet_level2`` (the two CR-U-Net training
stages of ``crunet_mdice``; level 2 takes slice + mask), ``densefcn_liver`` (input at the given
size, output twice as large through the SBU) and ``densefcn_tumour`` (3 channels).

Examples::

    python benchmarks/train_speed.py                        # all models, 256 and 512, cpu+cuda
    python benchmarks/train_speed.py --models runet densefcn_liver --sizes 256 --iterations 5
    python benchmarks/train_speed.py --devices cpu --json speed.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time

MODELS = {
    "unet": ("unet", None),
    "runet": ("runet", None),
    "crunet_level1": ("crunet_mdice", "level1"),
    "crunet_level2": ("crunet_mdice", "level2"),
    "densefcn_liver": ("densefcn_liver", None),
    "densefcn_tumour": ("densefcn_tumour", None),
}


def machine() -> dict:
    """A description of this machine and software."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def _measure(
    model_key: str,
    size: int,
    device: str,
    iterations: int,
    warmup: int,
    batch_size: int | None,
    queue,
) -> None:
    """Child process: one measurement, result put on ``queue``."""
    try:
        import torch

        from livseg.losses import build_loss
        from livseg.models import build_model
        from livseg.train.config import load_config
        from livseg.train.staging import freeze_for_stage

        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        config_name, stage = MODELS[model_key]
        cfg = load_config(config_name)
        dev = torch.device(device)
        torch.manual_seed(0)
        model = build_model(cfg.model.name, **cfg.model.options)
        channels = cfg.data.channels
        net = freeze_for_stage(model, stage or "model")
        if stage == "level2":
            channels = net.in_channels
        net.to(dev).train()
        loss_fn = build_loss(cfg.loss.name, **cfg.loss.options).to(dev)
        b = batch_size or cfg.train.batch_size
        x = torch.rand(b, channels, size, size, device=dev)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-4)
        amp = dev.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        target = None

        def step() -> None:
            nonlocal target
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                logits = net(x)
            if target is None:
                target = (torch.rand(b, *logits.shape[-2:], device=dev) > 0.7).float()
            loss = loss_fn(logits.float(), target, None)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        def sync() -> None:
            if amp:
                torch.cuda.synchronize(dev)

        for _ in range(warmup):
            step()
        sync()
        if amp:
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(iterations):
            step()
        sync()
        seconds = time.perf_counter() - t0
        if amp:
            peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
        else:
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        queue.put(
            {
                "model": model_key,
                "size": size,
                "device": device,
                "batch_size": b,
                "iterations": iterations,
                "seconds": seconds,
                "slices_per_s": b * iterations / seconds,
                "peak_memory_mb": peak_mb,
                "memory_kind": "cuda max allocated" if amp else "process max RSS",
                "baseline_rss_mb": base_rss / 1024,
                "parameters": sum(p.numel() for p in net.parameters()),
            }
        )
    except Exception as exc:  # report, do not hang the parent
        queue.put({"model": model_key, "size": size, "device": device, "error": repr(exc)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (1)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per batch (default: each configuration's)",
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    import torch

    info = machine()
    print("machine:", json.dumps(info))
    devices = list(args.devices)
    if "cuda" in devices and not torch.cuda.is_available():
        print("CUDA not available: skipping the cuda runs")
        devices.remove("cuda")
    ctx = mp.get_context("spawn")
    results = []
    header = (
        f"{'model':<16}{'size':>6}{'device':>8}{'batch':>7}{'slices/s':>11}{'peak MB':>10}  memory"
    )
    print(header)
    for device in devices:
        for size in args.sizes:
            for key in args.models:
                queue = ctx.Queue()
                proc = ctx.Process(
                    target=_measure,
                    args=(key, size, device, args.iterations, args.warmup, args.batch_size, queue),
                )
                proc.start()
                proc.join()
                r = (
                    queue.get()
                    if not queue.empty()
                    else {
                        "model": key,
                        "size": size,
                        "device": device,
                        "error": f"process exited with code {proc.exitcode}",
                    }
                )
                results.append(r)
                if "error" in r:
                    print(f"{key:<16}{size:>6}{device:>8}  error: {r['error']}")
                else:
                    print(
                        f"{key:<16}{size:>6}{device:>8}{r['batch_size']:>7}"
                        f"{r['slices_per_s']:>11.2f}{r['peak_memory_mb']:>10.0f}  "
                        f"{r['memory_kind']}"
                    )
                sys.stdout.flush()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": info, "results": results}, fh, indent=1)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
