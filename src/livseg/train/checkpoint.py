"""Checkpoints: a folder per checkpoint, written atomically, that rebuilds its model alone.

Layout of a checkpoint folder (e.g. ``<run>/best/`` or ``<run>/last/``)::

    model.safetensors   the model's full state dict (weights and buffers), safetensors format
    config.json         the resolved training configuration (livseg.train.config)
    checkpoint.json     epoch, stage, validation metrics, livseg version (informative)
    state.pt            training state for resuming: optimizer, GradScaler, epoch, step,
                        early-stopping counters, RNG states; tensors and plain Python values
                        only, loaded with ``torch.load(weights_only=True)``

The folder is first written under a temporary name and then renamed into place; the previous
checkpoint is moved aside before and deleted after, so a process killed at any moment leaves
either the old or the new complete checkpoint (:func:`find_checkpoint` also recovers the
moved-aside one). Nothing is pickled: loading a checkpoint never executes code.
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
from safetensors.torch import load_file, save_file
from torch import nn

from livseg import __version__
from livseg.errors import InputError
from livseg.train.config import Config, config_from_dict, config_to_dict

logger = logging.getLogger("livseg.train.checkpoint")

__all__ = [
    "MODEL_FILE",
    "CONFIG_FILE",
    "STATE_FILE",
    "INFO_FILE",
    "save_checkpoint",
    "find_checkpoint",
    "load_config_of",
    "load_weights",
    "load_state",
    "load_model",
    "rng_state",
    "set_rng_state",
]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
INFO_FILE = "checkpoint.json"
_OLD_SUFFIX = ".old"


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
        old = folder.with_name(folder.name + _OLD_SUFFIX)
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


def _complete(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / CONFIG_FILE).is_file()


def find_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The complete checkpoint at ``folder``, or its moved-aside predecessor after a kill.

    Returns:
        ``folder`` or ``folder.old`` when complete, else None.
    """
    folder = Path(folder)
    for cand in (folder, folder.with_name(folder.name + _OLD_SUFFIX)):
        if cand.is_dir() and _complete(cand):
            return cand
    return None


def _require(folder: str | os.PathLike) -> Path:
    found = find_checkpoint(folder)
    if found is None:
        raise InputError(
            f"{folder}: not a livseg checkpoint folder (needs {MODEL_FILE} and {CONFIG_FILE})"
        )
    return found


def load_config_of(checkpoint_dir: str | os.PathLike) -> Config:
    """The resolved configuration saved in a checkpoint folder."""
    folder = _require(checkpoint_dir)
    path = folder / CONFIG_FILE
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the checkpoint's configuration ({exc})") from exc
    return config_from_dict(d, str(path))


def load_info(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The content of ``checkpoint.json`` (empty dict when absent)."""
    path = _require(checkpoint_dir) / INFO_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def load_weights(model: nn.Module, checkpoint_dir: str | os.PathLike, prefix: str = "") -> None:
    """Load ``model.safetensors`` into ``model`` (strict).

    Args:
        model: The module to fill.
        checkpoint_dir: The checkpoint folder.
        prefix: Load only the keys starting with ``prefix`` (stripped), e.g. ``"level1."`` to
            fill a CR-U-Net's level 1 from a full-model checkpoint.

    Raises:
        InputError: Missing folder/file, or keys/shapes that do not match the model.
    """
    path = _require(checkpoint_dir) / MODEL_FILE
    weights = load_file(str(path))
    if prefix:
        weights = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit the model ({exc})") from exc


def load_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The training state ``state.pt`` (``torch.load(weights_only=True)``, on the CPU)."""
    path = _require(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        raise InputError(f"{path}: checkpoint has no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise InputError(f"{path}: cannot read the training state ({exc})") from exc


def load_model(
    checkpoint_dir: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Config]:
    """Rebuild a trained model from its checkpoint folder alone.

    Args:
        checkpoint_dir: A checkpoint folder (``model.safetensors`` + ``config.json``), e.g.
            ``run/best`` or ``run/level2/best``.
        device: Where to put the model (``"cpu"``, ``"cuda:0"``, a ``torch.device``).

    Returns:
        ``(model, config)``; the model is in eval mode and returns logits. A CR-U-Net checkpoint
        written during level-1 training is returned at stage ``"level1"`` (its level 2 is
        untrained), one written during or after level-2 training at stage ``"full"``.

    Raises:
        InputError: Not a checkpoint, unreadable configuration, weights that do not fit.
    """
    from livseg.models import build_model

    folder = _require(checkpoint_dir)
    config = load_config_of(folder)
    model = build_model(config.model.name, **config.model.options)
    load_weights(model, folder)
    if config.model.name == "crunet":
        stage = load_info(folder).get("stage", "level2")
        model.set_stage("level1" if stage == "level1" else "full")
    model.eval()
    return model.to(device), config
