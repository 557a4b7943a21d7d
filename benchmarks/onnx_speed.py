"""PyTorch against ONNX Runtime for each shipped slice network, side by side, on the CPU.

For the first member of every shipped slice model (livseg's fine CR-U-Net and residual U-Net
tumour stage, the papers' CR-U-Net and DenseFCNs), a batch of working-size inputs runs through:

* PyTorch as loaded (contiguous tensors), the reference;
* PyTorch with channels-last tensors (livseg's ``--backend torch``);
* ONNX Runtime, CPU execution provider, all graph optimisations (``--backend onnx``).

It prints milliseconds per slice, the speed-up over the reference and the largest absolute
difference of the logits from the reference (the back-end is adopted only at <= 1e-4).

Usage::

    python benchmarks/onnx_speed.py                 # 2 threads, batch 8
    python benchmarks/onnx_speed.py --threads 4 --batch 16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from segment_speed import cpu_model


def bench(fn, x, repeats: int) -> tuple[float, object]:
    """(ms per slice, last output) of ``fn(x)`` after one warm-up call."""
    out = fn(x)
    t = time.perf_counter()
    for _ in range(repeats):
        out = fn(x)
    return (time.perf_counter() - t) / repeats / x.shape[0] * 1000, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    os.environ["LIVSEG_CACHE"] = tempfile.mkdtemp(prefix="livseg-onnx-bench-")
    import torch

    from livseg.infer.backend import prepare
    from livseg.infer.pretrained import SHIPPED_MODELS, ensemble_members, locate
    from livseg.models.checkpoint import load_model

    torch.set_num_threads(args.threads)
    print(f"{cpu_model()}, {args.threads} threads, batch {args.batch}, ms per slice")
    print(f"{'model':<22}{'torch':>8}{'ch-last':>9}{'onnx':>8}{'speed-up':>10}{'max |diff|':>12}")
    for name in SHIPPED_MODELS:
        member = ensemble_members(locate(name))[0]
        model, spec = load_model(member)
        if spec.preprocess.pipeline == "coarse":
            continue  # 3-D, any input size: always PyTorch
        size, chans = int(spec.preprocess.size), int(spec.preprocess.channels)
        x = torch.rand(args.batch, chans, size, size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            ref_ms, ref = bench(model, x, args.repeats)
            (fast,) = prepare([model], [member], (1, chans, size, size), "torch")
            xl = x.contiguous(memory_format=torch.channels_last)
            cl_ms, _ = bench(fast, xl, args.repeats)
        fast = fast.to(memory_format=torch.contiguous_format)
        (net,) = prepare([fast], [member], (1, chans, size, size), "onnx")
        onnx_ms, got = bench(net, x, args.repeats)
        diff = float((got - ref).abs().max())
        print(
            f"{name:<22}{ref_ms:>8.1f}{cl_ms:>9.1f}{onnx_ms:>8.1f}"
            f"{ref_ms / onnx_ms:>9.2f}x{diff:>12.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
