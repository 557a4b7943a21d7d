"""Distributed data-parallel set-up for ``torchrun``: process group, samplers, small collectives.

The process group itself is :mod:`livseg.distributed` (shared with inference); this module adds
what only training needs. The same ``livseg train`` command runs alone or under ``torchrun --nproc_per_node N -m livseg.cli
train ...`` (and multi-node torchrun): when torchrun's environment (``WORLD_SIZE`` > 1) is present,
:func:`init_distributed` joins the process group with the **gloo** backend on CPU and **nccl** on
CUDA; models are wrapped in :class:`torch.nn.parallel.DistributedDataParallel`, batches are drawn
with :class:`torch.utils.data.DistributedSampler` (or :class:`DistributedWeightedSampler` for
foreground oversampling) and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from livseg.distributed import active

logger = logging.getLogger("livseg.train.distributed")

__all__ = [
    "all_reduce_mean",
    "check_parameters_in_sync",
    "DistributedWeightedSampler",
]


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a float over ranks (the value itself when not distributed)."""
    if not active():
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
    if not active():
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
