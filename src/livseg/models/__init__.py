"""Segmentation networks and their registry.

Every network takes slices (B, C, H, W) and returns logits (B, out_channels, H, W) (or 2H x 2W
for DenseFCN with ``sbu=True``). Sigmoid/softmax live in the losses, the predictor and the metrics;
:func:`foreground_probability` turns logits into foreground probabilities.

Registry (:data:`MODELS`): ``unet`` (:class:`UNet`), ``runet`` (:class:`RUNet`), ``crunet``
(:class:`CRUNet`), ``densefcn`` (:class:`DenseFCN`), and the coarse stage's 3-D ``unet3d``
(:class:`UNet3D`, volumes (B, C, D, H, W)). Build one with
``build_model(name, **options)``; the options are the class's constructor arguments.

A trained network is rebuilt from its checkpoint folder (``model.safetensors`` + ``config.json``)
by :func:`load_model` (:mod:`livseg.models.checkpoint`), which returns it with its
:class:`ModelSpec` (name, options and input pre-processing) and needs no training code.
"""

from __future__ import annotations

import inspect
import logging

from torch import nn

from livseg.checkpoint_spec import ModelSpec
from livseg.models.blocks import (
    InputSizeError,
    ModelOptionError,
    foreground_probability,
    nearest_valid_size,
)
from livseg.models.checkpoint import load_model
from livseg.models.crunet import CRUNet
from livseg.models.densefcn import DenseFCN
from livseg.models.runet import RUNet
from livseg.models.unet import UNet
from livseg.models.unet3d import UNet3D

logger = logging.getLogger("livseg.models")

__all__ = [
    "MODELS",
    "build_model",
    "load_model",
    "ModelSpec",
    "model_options",
    "foreground_probability",
    "nearest_valid_size",
    "InputSizeError",
    "ModelOptionError",
    "UNet",
    "RUNet",
    "CRUNet",
    "DenseFCN",
    "UNet3D",
]

MODELS: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "runet": RUNet,
    "crunet": CRUNet,
    "densefcn": DenseFCN,
    "unet3d": UNet3D,
}


def model_options(name: str) -> dict[str, object]:
    """The options a registered model takes, with their defaults.

    Args:
        name: A key of :data:`MODELS`.

    Returns:
        ``{option: default}`` in constructor order.

    Raises:
        ModelOptionError: Unknown name (the message lists the valid names).
    """
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self"}


def _lookup(name: str) -> type[nn.Module]:
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ModelOptionError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None


def build_model(name: str, **options: object) -> nn.Module:
    """Build a registered network.

    Args:
        name: ``"unet"``, ``"runet"``, ``"crunet"`` or ``"densefcn"``.
        **options: Constructor arguments of that network (see its class docstring).

    Returns:
        The network (in training mode, on CPU), returning logits.

    Raises:
        ModelOptionError: Unknown name or option (the message lists the valid ones), or an option
            value out of range.
    """
    cls = _lookup(name)
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ModelOptionError(
            f"unknown option(s) {', '.join(unknown)} for model {name!r}; "
            f"valid options: {', '.join(valid)}"
        )
    try:
        model = cls(**options)
    except TypeError as exc:  # e.g. a list where an int is needed
        raise ModelOptionError(f"bad option for model {name!r}: {exc}") from exc
    n_params = sum(p.numel() for p in model.parameters())
    logger.debug("built %s with %s: %d parameters", name, options, n_params)
    return model
