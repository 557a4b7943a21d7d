"""Writing checkpoints and the training state: a folder per checkpoint, written atomically.

Reading a checkpoint for inference (:func:`~livseg.models.checkpoint.load_model` and
``load_weights``; the file names, :func:`~livseg.checkpoint_spec.find_checkpoint` and
``load_info`` in the torch-free :mod:`livseg.checkpoint_spec`) lives outside training, so that
inference needs no training code; this module adds what
only training needs: :func:`save_checkpoint`, the resumable state ``state.pt`` and the random
generators' state, and :func:`load_config_of` (the whole training configuration).

Layout of a checkpoint folder (e.g. ``<run>/best/`` or ``<run>/last/``)::

    model.safetensors   the model's full state dict (weights and buffers), safetensors format
    config.json         the resolved training configuration (livseg.train.config)
    checkpoint.json     epoch, stage, validation metrics, livseg version (informative)
    state.pt            training state for resuming: optimizer, GradScaler, epoch, step,
                        early-stopping counters, RNG states; tensors and plain Python values
                        only, loaded with ``torch.load(weights_only=True)``

The folder is first written under a temporary name and then renamed into place; the previous
checkpoint is moved aside before and deleted after, so a process killed at any moment leaves
either the old or the new complete checkpoint
(:func:`livseg.checkpoint_spec.find_checkpoint` also recovers the moved-aside one). Nothing is pickled: loading a checkpoint never executes code.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from livseg import __version__
from livseg.checkpoint_spec import (
    CONFIG_FILE,
    INFO_FILE,
    MODEL_FILE,
    OLD_SUFFIX,
    read_config_json,
    require_checkpoint,
)
from livseg.errors import InputError
from livseg.train.config import Config, config_from_dict, config_to_dict

logger = logging.getLogger("livseg.train.checkpoint")

__all__ = [
    "STATE_FILE",
    "save_checkpoint",
    "load_config_of",
    "load_state",
    "rng_state",
    "set_rng_state",
]

STATE_FILE = "state.pt"


def rng_state() -> dict[str, Any]:
    """The state of the torch, CUDA, numpy (legacy global) and Python generators.

    Returned as tensors and plain values so that ``torch.load(weights_only=True)`` reads it.
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by :func:`rng_state` (missing parts are skipped)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(
            (
                "MT19937",
                n["keys"].numpy().astype(np.uint32),
                n["pos"],
                n["has_gauss"],
                n["cached_gaussian"],
            )
        )
    if "python" in state:
        internal, version = state["python"]
        random.setstate((version, tuple(internal), None))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    folder: str | os.PathLike,
    model: nn.Module,
    config: Config,
    state: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically, replacing an existing one.

    Args:
        folder: The checkpoint folder, e.g. ``run/last``.
        model: The full model (for CR-U-Net the whole cascade); unwrap DDP first.
        config: The resolved configuration (saved as ``config.json``).
        state: Training state for resuming (tensors, numbers, strings, lists, dicts); None
            writes no ``state.pt`` (e.g. a final, weights-only checkpoint).
        info: JSON-serialisable facts written to ``checkpoint.json`` (epoch, metrics...).

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(
            weights,
            str(tmp / MODEL_FILE),
            metadata={"format": "livseg-checkpoint-1", "model": config.model.name},
        )
        (tmp / CONFIG_FILE).write_text(
            json.dumps(config_to_dict(config), indent=1) + "\n", encoding="utf-8"
        )
        (tmp / INFO_FILE).write_text(
            json.dumps(
                {"livseg_version": __version__, **(info or {})}, indent=1, default=_json_default
            )
            + "\n",
            encoding="utf-8",
        )
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        old = folder.with_name(folder.name + OLD_SUFFIX)
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.debug("checkpoint written: %s", folder)
    return folder


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_config_of(checkpoint_dir: str | os.PathLike) -> Config:
    """The resolved configuration saved in a checkpoint folder."""
    folder = require_checkpoint(checkpoint_dir)
    return config_from_dict(read_config_json(folder), str(folder / CONFIG_FILE))


def load_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The training state ``state.pt`` (``torch.load(weights_only=True)``, on the CPU)."""
    path = require_checkpoint(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        raise InputError(f"{path}: checkpoint has no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise InputError(f"{path}: cannot read the training state ({exc})") from exc
