"""Device policy, in one place: ``auto | cpu | cuda | cuda:N``.

Used by inference (:mod:`livseg.infer`) and training (:mod:`livseg.train`) alike, so it lives at
the package top level and imports nothing but :mod:`livseg.errors` (torch only when called).

``auto`` picks CUDA when available (under torchrun: the GPU of this process's ``LOCAL_RANK``),
else the CPU. Mixed precision (autocast + GradScaler) is used only on CUDA devices
(:func:`amp_enabled`); bfloat16 autocast on the CPU only when asked for (:func:`cpu_bf16_enabled`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from livseg.errors import LivsegError

logger = logging.getLogger("livseg.device")

__all__ = [
    "DeviceError",
    "parse_device",
    "resolve_device",
    "amp_enabled",
    "cpu_bf16_enabled",
    "native_bf16",
    "no_cuda_here",
]

_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


class DeviceError(LivsegError):
    """A device option is malformed or names a device that is not available."""


def parse_device(spec: str, option: str = "--device") -> tuple[str, int | None]:
    """Check the syntax of a device option.

    Args:
        spec: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        option: Name of the option for error messages.

    Returns:
        ``(kind, index)``, e.g. ``("cuda", 1)`` or ``("auto", None)``.

    Raises:
        DeviceError: Anything else.
    """
    m = _DEVICE.match(str(spec).strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise DeviceError(f"{option}: {spec!r} is not a device; use auto, cpu, cuda or cuda:N")
    return m.group(1), (int(m.group(2)) if m.group(2) is not None else None)


def no_cuda_here(spec: str) -> bool:
    """Whether ``spec`` surely means the CPU, known without importing torch: ``cpu``, or
    ``auto`` on a Linux machine without NVIDIA device files (``/dev/nvidia0``, ...), where
    ``torch.cuda.is_available()`` is False. False when unsure (then :func:`resolve_device`)."""
    kind, _ = parse_device(spec)
    if kind == "cpu":
        return True
    if kind != "auto" or "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False
    return not any(Path("/dev").glob("nvidia[0-9]*"))


def resolve_device(spec: str = "auto", local_rank: int | None = None):
    """The torch device to run on.

    Args:
        spec: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: Rank of this process on its node under torchrun; with ``auto`` or ``cuda``
            (no index) it selects the GPU ``cuda:local_rank`` (default: torchrun's ``LOCAL_RANK``,
            0 without torchrun).

    Returns:
        A ``torch.device``.

    Raises:
        DeviceError: Malformed spec, CUDA requested but not available, or a GPU index beyond the
            visible GPUs.
    """
    import torch

    kind, index = parse_device(spec)
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)"
        )
    if index is None:
        index = local_rank if local_rank is not None else int(os.environ.get("LOCAL_RANK", 0))
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"--device {spec}: GPU {index} requested but only {count} visible")
    return torch.device("cuda", index)


def amp_enabled(device, requested: bool = True) -> bool:
    """Whether autocast + GradScaler are used: only on CUDA, and only when requested."""
    return bool(requested) and getattr(device, "type", str(device)) == "cuda"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX, as oneDNN sees it)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_bf16_enabled(device, requested: bool = False) -> bool:
    """Whether training uses bfloat16 autocast on the CPU: only on CPU devices, only when
    requested. Warns when the CPU has no native bfloat16 (emulated, hence slower)."""
    if not requested or getattr(device, "type", str(device)) != "cpu":
        return False
    if not native_bf16():
        logger.warning(
            "train.amp_cpu: this CPU has no native bfloat16 (AVX-512 BF16 or AMX); training will "
            "be slower than in float32, set train.amp_cpu=false"
        )
    return True
