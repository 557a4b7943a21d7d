"""Distributed data-parallel set-up for ``torchrun``: process group, samplers, small collectives.

The same ``livseg train`` command runs alone or under ``torchrun --nproc_per_node N -m livseg.cli
train ...`` (and multi-node torchrun): when torchrun's environment (``WORLD_SIZE`` > 1) is present,
:func:`init_distributed` joins the process group with the **gloo** backend on CPU and **nccl** on
CUDA; models are wrapped in :class:`torch.nn.parallel.DistributedDataParallel`, batches are drawn
with :class:`torch.utils.data.DistributedSampler` (or :class:`DistributedWeightedSampler` for
foreground oversampling) and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

logger = logging.getLogger("livseg.train.distributed")

__all__ = [
    "DistInfo",
    "init_distributed",
    "shutdown_distributed",
    "barrier",
    "broadcast_object",
    "all_reduce_mean",
    "check_parameters_in_sync",
    "DistributedWeightedSampler",
]

_STARTED_HERE = False


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
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0


def env_info() -> DistInfo:
    """The rank layout announced by torchrun's environment variables (single process if none)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group if there is one (idempotent).

    Args:
        device: This process's device; CUDA selects the nccl backend (and ``set_device``), the
            CPU gloo.

    Returns:
        The :class:`DistInfo` of this process.
    """
    global _STARTED_HERE
    info = env_info()
    if not info.enabled:
        return info
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # rank 0 validates while the others wait: allow for long validations
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
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


def shutdown_distributed() -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    global _STARTED_HERE
    if _STARTED_HERE and dist.is_initialized():
        dist.destroy_process_group()
    _STARTED_HERE = False


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if _active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; no-op when not distributed)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a float over ranks (the value itself when not distributed)."""
    if not _active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def parameter_checksum(module: torch.nn.Module) -> torch.Tensor:
    """(P,) float64: the sum of every parameter tensor (cheap fingerprint).

    Buffers (BatchNorm running statistics) are left out: each rank updates them with its own
    batch in the last forward pass; DDP re-broadcasts rank 0's at the next forward, and rank 0's
    are the ones checkpointed.
    """
    tensors = [p.detach() for p in module.parameters()]
    return torch.stack([t.double().sum() for t in tensors]) if tensors else torch.zeros(0)


def check_parameters_in_sync(module: torch.nn.Module, device: torch.device) -> bool:
    """Verify that every rank holds the same weights (DDP's promise).

    Gathers a per-tensor checksum from all ranks; logs the result on rank 0.

    Returns:
        True when identical on all ranks (always True when not distributed).

    Raises:
        RuntimeError: The ranks differ (a bug: training would silently diverge).
    """
    if not _active():
        return True
    local = parameter_checksum(module).to(device)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    same = all(torch.equal(gathered[0], g) for g in gathered[1:])
    if not same:
        raise RuntimeError("distributed training: model weights differ between ranks")
    if dist.get_rank() == 0:
        logger.info(
            "distributed: weights identical on all %d ranks (%d parameter tensors checked)",
            dist.get_world_size(),
            local.numel(),
        )
    return True


class DistributedWeightedSampler(Sampler[int]):
    """Weighted sampling with replacement, split across ranks like ``DistributedSampler``.

    Every rank draws the same global sequence of ``num_samples * world_size`` indices from a
    generator seeded with ``(seed, epoch)`` and keeps every ``world_size``-th one starting at its
    rank, so ranks see disjoint draws and the union follows ``weights``.

    Args:
        weights: (N,) non-negative sampling weights.
        num_samples: Draws per rank and epoch.
        rank: This process's rank.
        world_size: Number of processes.
        seed: Base seed.
    """

    def __init__(
        self,
        weights: np.ndarray,
        num_samples: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0 or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be a non-empty 1-D array of non-negative values")
        self.p = w / w.sum()
        self.num_samples = int(num_samples)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draws of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        draws = rng.choice(self.p.size, size=self.num_samples * self.world_size, p=self.p)
        return iter(int(i) for i in draws[self.rank :: self.world_size])

    def __len__(self) -> int:
        return self.num_samples
