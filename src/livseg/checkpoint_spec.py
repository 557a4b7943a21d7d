"""The torch-free half of reading a checkpoint folder: its files, ``config.json`` and the
:class:`ModelSpec` (network name, options, pre-processing) it describes.

It sits at the package top level (like :mod:`livseg.device`) because importing anything under
:mod:`livseg.models` imports torch: with a warm ONNX export cache, inference
(:mod:`livseg.infer.backend`) builds its networks from these specs and the cached ONNX files
without importing torch at all. :mod:`livseg.models.checkpoint` adds the loading of the
weights into a torch network.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livseg.errors import InputError, LivsegError
from livseg.preprocess.pipeline import PreprocessSettings

__all__ = [
    "MODEL_FILE",
    "CONFIG_FILE",
    "INFO_FILE",
    "OLD_SUFFIX",
    "ModelSpec",
    "find_checkpoint",
    "require_checkpoint",
    "read_config_json",
    "model_spec",
    "load_info",
]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
INFO_FILE = "checkpoint.json"
OLD_SUFFIX = ".old"
"""Suffix of the previous checkpoint, moved aside while a new one is renamed into place."""


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint says about its network: enough to rebuild it and to feed it.

    Attributes:
        name: :data:`livseg.models.MODELS` name (``unet``, ``runet``, ``crunet``, ``densefcn``).
        options: Constructor options of that model.
        preprocess: The pre-processing of the network's input (the config's ``data`` section).
    """

    name: str
    options: dict[str, Any]
    preprocess: PreprocessSettings


def _complete(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / CONFIG_FILE).is_file()


def find_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The complete checkpoint at ``folder``, or its moved-aside predecessor after a kill.

    Returns:
        ``folder`` or ``folder.old`` when complete, else None.
    """
    folder = Path(folder)
    for cand in (folder, folder.with_name(folder.name + OLD_SUFFIX)):
        if cand.is_dir() and _complete(cand):
            return cand
    return None


def require_checkpoint(folder: str | os.PathLike) -> Path:
    """:func:`find_checkpoint`, raising when there is none.

    Raises:
        InputError: ``folder`` (and ``folder.old``) is not a complete checkpoint.
    """
    found = find_checkpoint(folder)
    if found is None:
        raise InputError(
            f"{folder}: not a livseg checkpoint folder (needs {MODEL_FILE} and {CONFIG_FILE})"
        )
    return found


def read_config_json(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder.

    Raises:
        InputError: Not a checkpoint, or an unreadable / non-JSON configuration.
    """
    path = require_checkpoint(checkpoint_dir) / CONFIG_FILE
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the checkpoint's configuration ({exc})") from exc
    if not isinstance(d, dict):
        raise InputError(f"{path}: a configuration must be a JSON object")
    return d


def model_spec(config: dict[str, Any], source: str = CONFIG_FILE) -> ModelSpec:
    """The ``model`` and ``data`` sections of a checkpoint configuration.

    Args:
        config: The parsed ``config.json``.
        source: Name used in error messages (the file's path).

    Raises:
        InputError: A missing or malformed ``model`` section, or no valid pre-processing
            settings (a ``data`` section with a ``pipeline``).
    """
    model = config.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise InputError(f"{source}: checkpoint config has no 'model' section with a 'name'")
    options = model.get("options", {})
    if not isinstance(options, dict):
        raise InputError(f"{source}: model.options must be a JSON object, got {options!r}")
    data = config.get("data")
    if not isinstance(data, dict) or "pipeline" not in data:
        raise InputError(
            f"{source}: checkpoint config holds no pre-processing settings "
            "(expected a 'data' section with a 'pipeline')"
        )
    try:
        preprocess = PreprocessSettings.from_dict(data)
    except (LivsegError, TypeError) as exc:
        raise InputError(f"{source}: data: {exc}") from exc
    return ModelSpec(model["name"], dict(options), preprocess)


def load_info(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The content of ``checkpoint.json`` (empty dict when absent)."""
    path = require_checkpoint(checkpoint_dir) / INFO_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))
