"""Training: configurations, plain training functions, checkpoints, DDP set-up, cross-validation.

Public API:

* :func:`load_config` / :class:`Config` (:mod:`livseg.train.config`): frozen-dataclass
  configurations from JSON files or bundled names, with ``section.key=value`` overrides
  (:func:`apply_overrides`, :mod:`livseg.train.overrides`);
* :func:`train` (:mod:`livseg.train.trainer`): train a configuration on a dataset (all stages);
* :func:`cross_validate` (:mod:`livseg.train.cv`): k-fold cross-validation by patient;
* :func:`save_checkpoint` (:mod:`livseg.train.checkpoint`): write a checkpoint folder (loading
  one for inference is :func:`livseg.models.checkpoint.load_model`; the device policy is
  :mod:`livseg.device`).

Importing this package imports torch lazily (on first use of these names).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Config",
    "load_config",
    "apply_overrides",
    "bundled_configs",
    "train",
    "TrainProgress",
    "TrainResult",
    "cross_validate",
    "CVResult",
    "save_checkpoint",
]

_WHERE = {
    "Config": "config",
    "load_config": "config",
    "apply_overrides": "overrides",
    "bundled_configs": "config",
    "train": "trainer",
    "TrainProgress": "results",
    "TrainResult": "results",
    "cross_validate": "cv",
    "CVResult": "cv",
    "save_checkpoint": "checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        module = importlib.import_module(f"livseg.train.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
