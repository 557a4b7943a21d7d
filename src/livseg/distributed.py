"""torchrun's process group, shared by inference (cohort sharding) and training (DDP).

``torchrun --nproc_per_node P [--nnodes N ...] -m livseg ...`` starts one process per rank with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment. :func:`init_distributed` joins
the process group (**gloo** on CPU, **nccl** on CUDA) when there is more than one process; the
collectives here are no-ops otherwise, so the same code runs alone and under torchrun.

This module sits at the package top level (like :mod:`livseg.device`) so that inference does
not import training code; the training-only pieces (samplers, DDP checks) are in
:mod:`livseg.train.distributed`. torch is imported only by :func:`init_distributed` (a process
group needs it) and by the collectives once a group exists, so a single process that never joins
one (``livseg segment`` on ONNX Runtime) does not import torch here.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("livseg.distributed")

__all__ = [
    "DistInfo",
    "env_info",
    "init_distributed",
    "shutdown_distributed",
    "barrier",
    "broadcast_object",
    "all_gather_object",
    "active",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: Global rank (0 when not distributed).
        world_size: Number of processes (1 when not distributed).
        local_rank: Rank on this node (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when running with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes shared files."""
        return self.rank == 0


def env_info() -> DistInfo:
    """The rank layout announced by torchrun's environment variables (single process if none)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


_STARTED_HERE = False


def init_distributed(
    device: torch.device, *, backend: str | None = None, timeout_minutes: float = 60.0
) -> DistInfo:
    """Join the torchrun process group if there is one (idempotent).

    Args:
        device: This process's device; CUDA selects the nccl backend (and ``set_device``), the
            CPU gloo.
        backend: ``"gloo"`` or ``"nccl"`` instead of the device's choice (inference exchanges
            only small Python objects, so it uses gloo everywhere).
        timeout_minutes: How long a collective waits for the slowest rank (training: rank 0
            validates while the others wait; a cohort: ranks finish their shards unevenly).

    Returns:
        The :class:`DistInfo` of this process.
    """
    global _STARTED_HERE
    info = env_info()
    if not info.enabled:
        return info
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend=backend, timeout=timeout)
        _STARTED_HERE = True
        logger.info(
            "distributed: rank %d of %d (local rank %d), backend %s",
            info.rank,
            info.world_size,
            info.local_rank,
            backend,
        )
    return DistInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=info.local_rank
    )


def shutdown_distributed(sync: bool = False) -> None:
    """Leave the process group if :func:`init_distributed` created it.

    Args:
        sync: first wait for every rank (a barrier). A rank that tears its connections down while
            another still uses them can make that one abort at exit (gloo: "terminate called
            without an active exception", about one run in ten of the two-process training test,
            so torchrun reported a failed job). Only after success: a rank that failed would
            leave the others waiting in the barrier.
    """
    global _STARTED_HERE
    if _STARTED_HERE:
        import torch.distributed as dist

        if dist.is_initialized():
            if sync:
                dist.barrier()
            dist.destroy_process_group()
    _STARTED_HERE = False


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def active() -> bool:
    """Whether a process group of more than one rank is running (without torch imported, none
    can be)."""
    if "torch" not in sys.modules:
        return False
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if active():
        _dist().barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; no-op when not distributed)."""
    if not active():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if not active():
        return [obj]
    dist = _dist()
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
