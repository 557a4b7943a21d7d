"""``train.amp_cpu`` against float32: one training step of each cascade network on the CPU.

For the networks livseg's cascade trains (``coarse_liver``: 3-D U-Net on patches;
``fine_crunet_liver``: the CR-U-Net's level-1 R-U-Net; ``tumour_runet``), with each bundled
configuration's batch and working size, it times Adam steps (forward, the configuration's loss,
backward, step) on random inputs, side by side:

* **float32**: what the trainer does by default (channels-first tensors);
* **amp_cpu**: ``train.amp_cpu=true``: bfloat16 autocast and channels-last tensors, weights and
  loss in float32 (:func:`livseg.train.loop.autocast`).

It prints seconds per step and the speed-up, and states the CPU, its native bfloat16 support and
the thread count. On CPUs without native bfloat16 the speed-up is below 1.

Usage::

    python benchmarks/amp_cpu_speed.py               # 1 thread, 3 timed steps after 1 untimed
    python benchmarks/amp_cpu_speed.py --threads 2 --steps 5
"""

from __future__ import annotations

import argparse
import sys
import time

from segment_speed import cpu_model

CONFIGS = ("coarse_liver", "fine_crunet_liver", "tumour_runet")


def network_and_batch(name: str):
    """The configuration's network (level 1 for the CR-U-Net), loss and a random batch."""
    import torch

    from livseg.losses import build_loss
    from livseg.models import build_model
    from livseg.train.config import load_config

    cfg = load_config(name)
    opts = dict(cfg.model.options)
    net = build_model(cfg.model.name, **opts)
    if cfg.model.name == "crunet":  # the first training stage: level 1 alone
        net = net.level1
    b = cfg.train.batch_size
    if cfg.data.pipeline == "coarse":
        x = torch.rand(b, 1, *cfg.train.patch)
    else:
        s = int(cfg.data.size)
        x = torch.rand(b, int(opts.get("in_channels", 1)), s, s)
    y = (torch.rand(b, *x.shape[2:]) > 0.8).long()
    return net, build_loss(cfg.loss.name, **cfg.loss.options), x, y


def seconds_per_step(name: str, bf16: bool, steps: int, warmup: int) -> float:
    import torch

    from livseg.infer.backend import memory_format
    from livseg.train.loop import autocast

    torch.manual_seed(0)
    net, loss_fn, x, y = network_and_batch(name)
    if bf16:
        net = net.to(memory_format=memory_format(x.dim()))
        x = x.contiguous(memory_format=memory_format(x.dim()))
    trainee = type("Trainee", (), {"amp": False, "cpu_bf16": bf16})()
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def step() -> None:
        with autocast(trainee):
            out = net(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    args = p.parse_args(argv)
    import torch

    from livseg.device import native_bf16

    torch.set_num_threads(args.threads)
    print(
        f"one training step, CPU: {cpu_model()}, native bfloat16: {native_bf16()}, "
        f"{args.threads} thread(s), torch {torch.__version__}"
    )
    print(f"  {'configuration':<20}{'float32 s':>10}{'amp_cpu s':>10}{'speed-up':>10}")
    for name in args.configs:
        fp32 = seconds_per_step(name, False, args.steps, args.warmup)
        bf16 = seconds_per_step(name, True, args.steps, args.warmup)
        print(f"  {name:<20}{fp32:>10.2f}{bf16:>10.2f}{fp32 / bf16:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
