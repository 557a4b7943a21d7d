"""PyTorch against ONNX Runtime for each shipped network, side by side, on the CPU.

For the first member of every shipped slice model (livseg's fine CR-U-Net and residual U-Net
tumour stage, the papers' CR-U-Net and DenseFCNs), a batch of working-size inputs runs through:

* PyTorch as loaded (contiguous tensors), the reference;
* PyTorch with channels-last tensors (livseg's ``--backend torch``);
* ONNX Runtime, CPU execution provider, all graph optimisations (``--backend onnx``).

It prints milliseconds per slice, the speed-up over the reference and the largest absolute
difference of the logits from the reference (the back-end is adopted only at <= 1e-4).

Then the coarse 3-D stage's members (exported with free depth, height and width) on the coarse
grids of real CTs (``--cts``; by default volume-0 and volume-4 of ``../shared/data/lits`` when
present, else random grids of their sizes): seconds per CT for all members in PyTorch and in ONNX
Runtime, and the largest differences of logits and of the mean probability (the whole cascade's
label agreement is in the model card).

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
from pathlib import Path

import numpy as np
from segment_speed import DEFAULT_DATA, cpu_model

GRIDS = ((48, 96, 96), (144, 112, 112))  # volume-0's and volume-4's padded coarse grids


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
    lits = DEFAULT_DATA / "lits"
    default = [lits / f"volume-{n}.nii.gz" for n in (0, 4)] if lits.is_dir() else []
    p.add_argument("--cts", nargs="*", type=Path, default=default, help="CTs for the coarse stage")
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
            continue  # 3-D, any input size: below
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
    coarse(args.cts, args.repeats)
    return 0


def _coarse_inputs(cts: list[Path]) -> list[tuple[str, np.ndarray]]:
    """(name, padded coarse grid) of each CT, or random grids of :data:`GRIDS`' sizes."""
    from livseg.infer.coarse import coarse_image, pad_to
    from livseg.io import read_volume
    from livseg.preprocess.orientation import canonical_view

    if not cts:
        rng = np.random.default_rng(0)
        return [(f"random {g}", rng.random(g, dtype=np.float32)) for g in GRIDS]
    out = []
    for path in cts:
        hu, reo = canonical_view(read_volume(path, kind="image"))
        image = coarse_image(hu, reo.canonical_geometry()[0], 4.0, (-250.0, 350.0))
        out.append((path.name, pad_to(image, 16, minimum=32)[0]))
    return out


def coarse(cts: list[Path], repeats: int) -> None:
    """The shipped coarse members in PyTorch and in ONNX Runtime on each CT's coarse grid."""
    import torch

    from livseg.infer.backend import onnx_networks
    from livseg.infer.pretrained import ensemble_members, locate
    from livseg.models.checkpoint import load_model

    members = ensemble_members(locate("coarse_liver"))
    models = [load_model(m)[0] for m in members]
    nets = onnx_networks(members, (1, 1, None, None, None), models.__getitem__, (1, 1, 32, 32, 32))
    print(f"\ncoarse_liver, {len(members)} members, seconds per CT (all members)")
    print(
        f"{'input':<26}{'grid':>16}{'torch':>8}{'onnx':>8}{'speed-up':>10}{'logits':>9}{'prob':>9}"
    )
    for name, grid in _coarse_inputs(cts):
        x = torch.from_numpy(grid)[None, None]

        with torch.inference_mode():
            t_ms, want = bench(lambda x: torch.stack([m(x) for m in models]), x, repeats)
            o_ms, got = bench(lambda x: torch.stack([n(x) for n in nets]), x, repeats)
        prob = (torch.sigmoid(got).mean(0) - torch.sigmoid(want).mean(0)).abs().max()
        print(
            f"{name:<26}{str(grid.shape):>16}{t_ms / 1000:>8.2f}{o_ms / 1000:>8.2f}"
            f"{t_ms / o_ms:>9.2f}x{float((got - want).abs().max()):>9.1e}{float(prob):>9.1e}"
        )


if __name__ == "__main__":
    sys.exit(main())
