"""The models shipped with livseg: list them, locate them, and say clearly when one is missing.

Shipped weights live in ``src/livseg/weights/<name>/`` as ``model.safetensors`` +
``config.json`` (the checkpoint format of :mod:`livseg.models.checkpoint`), documented in
``src/livseg/weights/MODEL_CARD.md``. This module is the one home of their names (the CLI's
``--model`` choices and help come from here) and imports neither torch nor scipy. Names:

* ``crunet_liver``: CR-U-Net liver model (``--model crunet --paper``);
* ``densefcn_liver``: liver DenseFCN (``--model densefcn``, both cascades);
* ``densefcn_tumour``: 3-window tumour DenseFCN (the papers' cascade);
* ``coarse_liver``, ``crunet_liver_fine``, ``runet_tumour``: livseg's cascade (3-fold ensembles).

A model folder is either one checkpoint or a **fold ensemble**: sub-folders ``fold0``,
``fold1``, ... each holding a checkpoint of the same configuration trained on other patients;
the stage then averages their probabilities (as nnU-Net ships its folds).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from livseg.errors import LivsegError

log = logging.getLogger("livseg.infer.pretrained")

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
"""Folder holding the shipped checkpoints, one sub-folder per model name."""

SHIPPED_MODELS: dict[str, str] = {
    "crunet_liver": "CR-U-Net liver model (two residual U-Nets with morphology between them)",
    "densefcn_liver": "DenseFCN liver model (half resolution, [-100, 300] HU)",
    "densefcn_tumour": "DenseFCN tumour model (3 HU windows, liver crop)",
    "coarse_liver": "coarse 3-D liver stage (whole CT at 4 mm), 3-fold ensemble",
    "crunet_liver_fine": "CR-U-Net liver model on the coarse region's crops, 3-fold ensemble",
    "runet_tumour": "residual U-Net tumour model (3 HU windows, liver box), 3-fold ensemble",
}
"""Name -> one-line description of every model livseg is meant to ship."""

DEFAULT_MODEL = "crunet"
"""Default ``--model`` choice (a key of :data:`PAPER_CASCADE` and :data:`LIVSEG_CASCADE`)."""

TUMOUR_MODEL = "densefcn_tumour"
"""Shipped tumour model name (shared by both cascades)."""

COARSE_MODEL = "coarse_liver"
"""Shipped coarse 3-D liver stage of livseg's own cascade."""

LIVSEG_CASCADE: dict[str, tuple[str, str, str]] = {
    "crunet": (COARSE_MODEL, "crunet_liver_fine", "runet_tumour"),
    "densefcn": (COARSE_MODEL, "densefcn_liver", "runet_tumour"),
}
"""``--model`` -> (coarse, liver, tumour) shipped models of livseg's cascade: the coarse 3-D stage
places the liver, the paper's liver model runs inside its region (the CR-U-Net fine model on
region crops; the liver DenseFCN on whole slices, restricted to the region), then the tumour
ensemble."""

PAPER_CASCADE: dict[str, tuple[None, str, str]] = {
    "crunet": (None, "crunet_liver", TUMOUR_MODEL),
    "densefcn": (None, "densefcn_liver", TUMOUR_MODEL),
}
"""``--model`` -> (no coarse stage, liver, tumour) shipped models of the papers' own cascade."""

DEFAULT_PAPER = False
"""The cascade ``livseg segment`` runs by default: livseg's (False); ``--paper`` runs the
papers'."""


def cascade_models(model: str, paper: bool) -> tuple[str | None, str, str]:
    """The shipped (coarse or None, liver, tumour) model names of a cascade.

    Raises:
        LivsegError: ``model`` is not a liver model family.
    """
    table = PAPER_CASCADE if paper else LIVSEG_CASCADE
    if model not in table:
        raise LivsegError(f"--model {model!r}: valid models are {', '.join(table)}")
    return table[model]


CHECKPOINT_FILES = ("model.safetensors", "config.json")


class MissingWeightsError(LivsegError):
    """A requested shipped model (or a checkpoint directory) is absent or incomplete."""


def _is_checkpoint(folder: Path) -> bool:
    return all((folder / f).is_file() for f in CHECKPOINT_FILES)


MEMBER_PREFIXES = ("fold", "member")
"""Sub-folders of an ensemble: ``fold<k>`` (a cross-validation fold's model; shipped members of
a ``train.members`` run are ``fold<k>-member<i>``) or ``member<i>`` (a training run's ensemble)."""


def _fold_members(folder: Path) -> list[Path]:
    """The ``fold*``/``member*`` sub-folders of ``folder`` that are checkpoints, in name order."""
    if not folder.is_dir():
        return []
    subs = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(MEMBER_PREFIXES)]
    return sorted((p for p in subs if _is_checkpoint(p)), key=lambda p: p.name)


def _is_complete(folder: Path) -> bool:
    return _is_checkpoint(folder) or bool(_fold_members(folder))


def ensemble_members(path: str | Path) -> list[Path]:
    """The checkpoint folders of a model folder: itself, or its ``fold*``/``member*`` ensemble
    members.

    Raises:
        MissingWeightsError: neither a checkpoint nor a folder of fold checkpoints.
    """
    path = check_checkpoint_dir(path)
    return [path] if _is_checkpoint(path) else _fold_members(path)


def select_folds(members: list[Path], folds: Sequence[int] | None, path: Path) -> list[Path]:
    """The members of fold ensemble ``path`` whose folder is ``fold<k>`` or ``fold<k>-*`` for a
    ``k`` in ``folds`` (nnU-Net's ``-f``); all of them when ``folds`` is None.

    Raises:
        LivsegError: ``path`` is not a fold ensemble, or lacks one of ``folds``.
    """
    if folds is None:
        return members
    of = {m: re.match(r"fold(\d+)(?:-|$)", m.name) for m in members}
    have = sorted({int(f[1]) for f in of.values() if f})
    if not have:
        raise LivsegError(f"{path}: --fold needs a fold ensemble (fold*/ folders)")
    missing = sorted(set(folds) - set(have))
    if missing:
        raise LivsegError(
            f"{path}: no fold {', '.join(map(str, missing))} (it has fold(s) "
            f"{', '.join(map(str, have))})"
        )
    return [m for m, f in of.items() if f and int(f[1]) in set(folds)]


def available_models(weights_dir: Path | None = None) -> list[str]:
    """Names of the shipped models whose checkpoint files are all present.

    Args:
        weights_dir: folder to look in (default :data:`WEIGHTS_DIR`).

    Returns:
        Sorted model names (sub-folders holding ``model.safetensors`` and ``config.json``).
    """
    root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _is_complete(p))


def check_checkpoint_dir(path: str | Path) -> Path:
    """Check that ``path`` is a checkpoint directory (``model.safetensors`` + ``config.json``)
    or an ensemble (``fold*/`` or ``member*/`` sub-folders that are).

    Raises:
        MissingWeightsError: the folder or one of its files is absent.
    """
    path = Path(path)
    if not path.is_dir():
        raise MissingWeightsError(f"{path}: model checkpoint folder not found")
    missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
    if missing and not _fold_members(path):
        raise MissingWeightsError(
            f"{path}: not a livseg checkpoint (missing {', '.join(missing)}) nor a fold "
            "ensemble (no fold*/ or member*/ sub-folder holding one)"
        )
    return path


def locate(name: str, weights_dir: Path | None = None) -> Path:
    """The checkpoint folder of shipped model ``name``.

    Args:
        name: one of :data:`SHIPPED_MODELS`.
        weights_dir: folder to look in (default :data:`WEIGHTS_DIR`).

    Raises:
        MissingWeightsError: unknown name (the message lists the valid ones) or the weights are
            not installed (the message names the missing folder and how to supply a model).
    """
    if name not in SHIPPED_MODELS:
        raise MissingWeightsError(
            f"unknown shipped model {name!r}; valid names: {', '.join(SHIPPED_MODELS)}"
        )
    root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    folder = root / name
    if not _is_complete(folder):
        missing = [f for f in CHECKPOINT_FILES if not (folder / f).is_file()]  # single form
        raise MissingWeightsError(
            f"{folder}: shipped model {name!r} is not installed (missing "
            f"{', '.join(missing)}); train one with `livseg train` and pass its folder "
            f"with --liver-model/--tumour-model, or place the checkpoint there"
        )
    return folder


def missing_models(names: list[str], weights_dir: Path | None = None) -> list[str]:
    """The subset of ``names`` that is not installed (in the given order)."""
    have = set(available_models(weights_dir))
    return [n for n in names if n not in have]
