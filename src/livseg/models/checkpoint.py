"""Reading a checkpoint folder: ``model.safetensors`` + ``config.json`` -> the trained network.

Layout of a checkpoint folder (written by :func:`livseg.train.checkpoint.save_checkpoint`)::

    model.safetensors   the model's full state dict (weights and buffers), safetensors format
    config.json         the resolved training configuration
    checkpoint.json     epoch, stage, validation metrics, livseg version (informative)
    state.pt            training state for resuming (training only; never read here)

**Why this lives beside the models and not in** :mod:`livseg.train`: inference (``io ->
preprocess -> models -> infer -> report``) must stand alone, without the training code. The
``config.json`` of a checkpoint is the trainer's whole :class:`livseg.train.config.Config`
(model, loss, data, augmentation, optimiser, schedule, loop); rebuilding the network needs only
two of its sections:

* ``model``: the registry name and constructor options (:func:`livseg.models.build_model`);
* ``data``: the pre-processing the network was trained with
  (:class:`livseg.preprocess.pipeline.PreprocessSettings`, already a frozen dataclass below
  training).

:func:`~livseg.checkpoint_spec.model_spec` reads exactly these into a small frozen
:class:`~livseg.checkpoint_spec.ModelSpec` (torch-free, in :mod:`livseg.checkpoint_spec` with the
file names and the folder checks), without the
trainer's ``Config`` class (whose loss, augmentation and optimiser sections belong to training
and import :mod:`livseg.data`); the other sections are left to
:func:`livseg.train.checkpoint.load_config_of`. Writing checkpoints and the training state
(``save_checkpoint``, ``state.pt``, RNG states, resuming) stays in :mod:`livseg.train.checkpoint`,
which takes the file names and the folder checks from :mod:`livseg.checkpoint_spec`.

Nothing is pickled: loading a checkpoint never executes code.
"""

from __future__ import annotations

import logging
import os

import torch
from safetensors.torch import load_file
from torch import nn

from livseg.checkpoint_spec import (
    CONFIG_FILE,
    MODEL_FILE,
    ModelSpec,
    load_info,
    model_spec,
    read_config_json,
    require_checkpoint,
)
from livseg.errors import InputError, LivsegError

logger = logging.getLogger("livseg.models.checkpoint")

__all__ = ["load_weights", "load_model"]  # the files and specs: livseg.checkpoint_spec


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
    path = require_checkpoint(checkpoint_dir) / MODEL_FILE
    weights = load_file(str(path))
    if prefix:
        weights = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit the model ({exc})") from exc


def load_model(
    checkpoint_dir: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a trained model from its checkpoint folder alone.

    Args:
        checkpoint_dir: A checkpoint folder (``model.safetensors`` + ``config.json``), e.g.
            ``run/best`` or ``run/level2/best``.
        device: Where to put the model (``"cpu"``, ``"cuda:0"``, a ``torch.device``).

    Returns:
        ``(model, spec)``; the model is in eval mode and returns logits; ``spec.preprocess`` is
        the input pre-processing it was trained with. A CR-U-Net checkpoint written during
        level-1 training is returned at stage ``"level1"`` (its level 2 is untrained), one
        written during or after level-2 training at stage ``"full"``.

    Raises:
        InputError: Not a checkpoint, unreadable configuration, unknown model or options,
            weights that do not fit.
    """
    from livseg.models import build_model  # livseg.models imports this module

    folder = require_checkpoint(checkpoint_dir)
    spec = model_spec(read_config_json(folder), str(folder / CONFIG_FILE))
    try:
        model = build_model(spec.name, **spec.options)
    except LivsegError as exc:
        raise InputError(f"{folder / CONFIG_FILE}: {exc}") from exc
    load_weights(model, folder)
    if spec.name == "crunet":
        stage = load_info(folder).get("stage", "level2")
        model.set_stage("level1" if stage == "level1" else "full")
    model.eval()
    return model.to(device), spec
