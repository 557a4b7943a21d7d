"""Training configurations: frozen dataclasses loaded from one JSON file, overridable from the CLI.

A configuration names everything a training run needs: the model (registry name + constructor
options), the loss (registry name + options), the pre-processing settings of the slice cache,
augmentation, optimiser, learning-rate schedule and the training loop itself. Epochs, learning
rate and architecture are values, never subclasses.

Bundled configurations live in ``livseg/configs/*.json`` (the repository's ``configs/`` folder is
a link to it, so there is one copy); :func:`load_config` takes a path or a bundled name::

    cfg = load_config("crunet_mdice", overrides=["train.epochs=3", "model.base_width=16"])

Overrides are ``section.key=value`` with ``value`` parsed as JSON when it parses (``3``, ``1e-4``,
``true``, ``[[0, 100]]``) and taken as a string otherwise (:mod:`livseg.train.overrides`). Every
value is type-checked against the dataclass field (or, for ``model.*`` and ``loss.*`` options,
against the model's / loss's constructor); an unknown key is an error that lists the valid ones.

The resolved configuration is saved as ``config.json`` beside every checkpoint
(:func:`config_to_dict` / :func:`config_from_dict` round-trip it exactly).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from livseg.data.augment import Augmentation
from livseg.data.augment3d import Augmentation3D
from livseg.errors import LivsegError
from livseg.preprocess.pipeline import PreprocessSettings

logger = logging.getLogger("livseg.train.config")

__all__ = [
    "ConfigError",
    "ModelConfig",
    "LossConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "Config",
    "bundled_configs",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "with_defaults",
    "field_types",
    "SCHEDULES",
    "OPTIMIZERS",
]

SCHEDULES: tuple[str, ...] = ("constant", "poly", "cosine", "step", "exponential")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw")
STAGES: tuple[str, ...] = ("all", "level1", "level2")


class ConfigError(LivsegError):
    """A configuration file or override is malformed, unknown or of the wrong type."""


@dataclass(frozen=True)
class ModelConfig:
    """The network: a :data:`livseg.models.MODELS` name and its constructor options.

    Attributes:
        name: ``unet``, ``runet``, ``crunet`` or ``densefcn``.
        options: Keyword arguments of the model class (e.g. ``base_width``, ``depth``,
            ``dropout``); unknown ones are an error. ``in_channels`` must match the
            pre-processing's channel count.
    """

    name: str = "runet"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig:
    """The loss: a :data:`livseg.losses` registry name and its options.

    Attributes:
        name: ``dice``, ``soft_dice``, ``tversky``, ``mdice``, ``wce`` or ``tumour_compound``.
        options: Keyword arguments of the loss class (e.g. ``alpha``, ``beta``, ``eps``).
    """

    name: str = "mdice"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerConfig:
    """Adam (or AdamW) settings.

    Attributes:
        name: ``adam`` (L2 weight decay added to the gradient, as the DenseFCN paper's "Adam with
            L2 weight-decay") or ``adamw`` (decoupled weight decay).
        lr: Initial learning rate (CR-U-Net paper: 1e-4).
        weight_decay: L2 weight decay; 0 disables it. The DenseFCN paper's value was lost in the
            text extraction: not given, default 0 (set 1e-4 in the DenseFCN configs).
        betas: Adam (beta1, beta2).
        eps: Adam epsilon.
        grad_clip: Maximum global L2 norm of the gradients; 0 disables clipping.
    """

    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 0.0


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule, applied per iteration over the whole run (all epochs).

    With ``t`` the fraction of the run done (0 -> 1) and ``lr0`` the optimiser's ``lr``:

    * ``constant``: ``lr0``;
    * ``poly``: ``final_lr + (lr0 - final_lr) * (1 - t) ** power``;
    * ``cosine``: ``final_lr + (lr0 - final_lr) * (1 + cos(pi * t)) / 2``;
    * ``step``: ``lr0 * gamma ** (epoch // step_epochs)``;
    * ``exponential``: ``lr0 * (final_lr / lr0) ** t`` - the CR-U-Net paper's decay from 1e-4 to
      1e-10 (``final_lr`` must be > 0).

    Attributes:
        name: One of :data:`SCHEDULES`.
        final_lr: Learning rate reached at the end (poly, cosine, exponential).
        power: Exponent of ``poly``.
        step_epochs: Epochs between two decays of ``step``.
        gamma: Decay factor of ``step``.
        warmup_epochs: Linear warm-up from ``lr0 / 100`` over this many epochs (0 = none).
    """

    name: Literal["constant", "poly", "cosine", "step", "exponential"] = "poly"
    final_lr: float = 0.0
    power: float = 0.9
    step_epochs: int = 10
    gamma: float = 0.1
    warmup_epochs: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Attributes:
        epochs: Number of epochs (per stage for CR-U-Net).
        batch_size: Slices per batch and per process (CR-U-Net paper: 2).
        iterations_per_epoch: Iterations that make one epoch (the DenseFCN paper defines an epoch
            as a fixed number of iterations on randomly sampled batches); 0 = one pass over the
            training slices.
        foreground_fraction: Oversample slices containing the target: the expected share of such
            slices among the drawn ones, in (0, 1); 0 = uniform sampling without replacement.
        val_batch_size: Slices per batch in validation.
        val_every: Validate every this many epochs (and always after the last).
        target: What the network segments: ``liver`` (label >= 1) or ``tumour`` (label == 2).
        monitor: Validation metric selecting the best checkpoint and driving early stopping
            (higher is better): ``dice_per_case`` (mean Dice over validation cases),
            ``dice_global`` or ``neg_loss`` (minus the validation loss).
        patience: Early stopping: stop after this many validations without improvement of
            ``monitor`` by more than ``min_delta``; 0 disables early stopping.
        min_delta: Smallest improvement that counts.
        amp: Mixed precision (autocast + GradScaler); used only on CUDA devices.
        amp_cpu: bfloat16 autocast and channels-last tensors on CPU devices; the weights, the
            optimiser state and the loss stay float32, and no GradScaler is needed (bfloat16 has
            float32's exponent range). On a CPU with native bfloat16 (AVX-512 BF16, AMX) one
            training step ran 1.6x (CR-U-Net level 1), 2.1x (tumour R-U-Net) and 2.5x (3-D coarse
            U-Net) faster on one thread (``benchmarks/amp_cpu_speed.py``); CPUs without it
            emulate bfloat16 and are slower (a warning says so). Off by default.
        seed: Seed of every random generator (weights, sampling, augmentation).
        members: Train this many networks, member ``i`` with seed ``seed + i`` (and the same
            cases and split), in ``member<i>/`` sub-folders of the run; the trained model is
            their ensemble (mean probability), the folder ``ensemble/`` holding each member's
            best checkpoint. Seeds alone make the members differ (as in deep ensembles); two
            narrow members can be as accurate as one wide network at less arithmetic.
        num_workers: DataLoader worker processes (0 = in the training process).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; the CLI's ``--device`` overrides it.
        stage: CR-U-Net only: ``all`` (level 1, then level 2), ``level1`` or ``level2``
            (needs a finished level 1 in the run folder).
        deterministic: Ask PyTorch for deterministic algorithms (slower on CUDA).
        patch: Coarse 3-D pipeline only: the training patch (d, h, w) in coarse voxels, each a
            multiple of the network's ``2**depth`` (one "slice" of the batch is one patch).
    """

    epochs: int = 50
    batch_size: int = 2
    iterations_per_epoch: int = 0
    foreground_fraction: float = 0.0
    val_batch_size: int = 8
    val_every: int = 1
    target: Literal["liver", "tumour"] = "liver"
    monitor: Literal["dice_per_case", "dice_global", "neg_loss"] = "dice_per_case"
    patience: int = 0
    min_delta: float = 0.0
    amp: bool = True
    amp_cpu: bool = False
    seed: int = 0
    members: int = 1
    num_workers: int = 0
    device: str = "auto"
    stage: Literal["all", "level1", "level2"] = "all"
    deterministic: bool = False
    patch: tuple[int, int, int] = (48, 80, 80)


@dataclass(frozen=True)
class Config:
    """A complete training configuration.

    Attributes:
        name: Short name (the bundled file's stem).
        description: Free text (what the paper says, what we chose).
        model: The network.
        loss: The loss.
        data: Pre-processing settings of the slice cache (see
            :class:`livseg.preprocess.pipeline.PreprocessSettings`).
        augment: Augmentation of the training slices (see
            :class:`livseg.data.augment.Augmentation`); null disables augmentation.
        augment3d: Augmentation of the coarse 3-D pipeline's volumes (see
            :class:`livseg.data.augment3d.Augmentation3D`); null: plain random patches.
        optimizer: Optimiser settings.
        schedule: Learning-rate schedule.
        train: The training loop.
    """

    name: str
    model: ModelConfig
    loss: LossConfig
    data: PreprocessSettings
    description: str = ""
    augment: Augmentation | None = field(default_factory=Augmentation)
    augment3d: Augmentation3D | None = field(default_factory=Augmentation3D)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> Config:
        """A copy with top-level fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)


# --- generic dataclass <-> dict with type checks ---------------------------------------------
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert_union(value: Any, tp: Any, where: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:
        return _convert(value, options[0], where)
    for a in options:
        try:
            return _convert(value, a, where)
        except ConfigError:
            continue
    raise ConfigError(f"{where}: {value!r} does not fit {_type_name(tp)}")


def _convert_dataclass(value: Any, tp: type, where: str) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a JSON object for {tp.__name__}, got {value!r}")
    return _dataclass_from_dict(tp, value, where)


def _convert_tuple(value: Any, tp: Any, where: str) -> tuple[Any, ...]:
    args = typing.get_args(tp)
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list for {_type_name(tp)}, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
    return tuple(
        _convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_SCALARS: dict[type, tuple[Any, str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (_is_number, "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}
"""Scalar field type -> (check of a parsed JSON value, what the error says was expected)."""


def _convert_scalar(value: Any, tp: Any, where: str) -> Any:
    if tp not in _SCALARS:  # pragma: no cover - every field type is covered
        raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")
    check, expected = _SCALARS[tp]
    if not check(value):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    return float(value) if tp is float else value


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` (parsed JSON) against type ``tp`` and convert it (lists -> tuples...)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        args = typing.get_args(tp)
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, where)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, where)
    if origin is tuple:
        return _convert_tuple(value, tp, where)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {value!r}")
        return dict(value)
    return _convert_scalar(value, tp, where)


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of a dataclass (init fields only)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _dataclass_from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    types_ = field_types(cls)
    unknown = sorted(set(d) - set(types_))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(types_)}"
        )
    kwargs = {k: _convert(v, types_[k], f"{where}.{k}" if where else k) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except LivsegError as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc
    except (TypeError, ValueError) as exc:  # a missing field, a value out of range
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init
        }
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def config_to_dict(config: Config) -> dict[str, Any]:
    """The configuration as a JSON-ready dict (the content of ``config.json``)."""
    return _jsonable(config)


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved configuration (``config.json``, a cross-validation's ``splits.json``) with the
    defaults of options added since it was written, so that they do not count as changes; as
    saved when it no longer parses."""
    try:
        return config_to_dict(config_from_dict(saved))
    except LivsegError:
        return saved


def config_from_dict(d: dict[str, Any], source: str = "config") -> Config:
    """Build and validate a :class:`Config` from a parsed JSON object.

    Args:
        d: The JSON object.
        source: Name used in error messages (a file path).

    Raises:
        ConfigError: Unknown keys (listing the valid ones), wrong types, invalid values.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: a configuration must be a JSON object")
    try:
        return _dataclass_from_dict(Config, d, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# --- options of registry entries (model / loss constructors) ---------------------------------
def _option_specs(kind: str, name: str) -> dict[str, tuple[Any, Any]]:
    """``{option: (type or None, default)}`` of a model or loss constructor."""
    if kind == "model":
        from livseg.models import MODELS

        registry: dict[str, Any] = MODELS
    else:
        from livseg.losses import LOSSES

        registry = LOSSES
    if name not in registry:
        raise ConfigError(
            f"{kind}.name: unknown {kind} {name!r}; valid names: {', '.join(sorted(registry))}"
        )
    target = registry[name]
    init = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    specs = {}
    for pname, p in inspect.signature(init).parameters.items():
        if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        tp = hints.get(pname)
        if tp is None and p.default is not inspect.Parameter.empty and p.default is not None:
            tp = type(p.default)
        specs[pname] = (tp, p.default)
    return specs


def _check_options(kind: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    specs = _option_specs(kind, name)
    out = {}
    for key, value in options.items():
        if key not in specs:
            raise ConfigError(
                f"{kind}.{key}: unknown option of {kind} {name!r}; valid options: "
                f"{', '.join(specs)}"
            )
        tp = specs[key][0]
        out[key] = value if tp is None else _convert(value, tp, f"{kind}.{key}")
    return out


def _validate_pipeline(cfg: Config) -> None:
    """The coarse 3-D pipeline takes a 3-D network and patches; slice pipelines take neither."""
    coarse = cfg.data.pipeline == "coarse"
    if coarse != (cfg.model.name == "unet3d"):
        raise ConfigError(
            f"model {cfg.model.name!r} does not fit data.pipeline {cfg.data.pipeline!r}: the "
            "coarse pipeline trains the 3-D 'unet3d', the slice pipelines a 2-D network"
        )
    if coarse and cfg.train.foreground_fraction > 0:
        raise ConfigError(
            "train.foreground_fraction applies to slices; the coarse pipeline centres patches on "
            "the liver with augment3d.foreground_prob"
        )
    if coarse and (cfg.train.stage != "all" or min(cfg.train.patch) < 1):
        raise ConfigError("the coarse pipeline needs train.stage 'all' and a positive train.patch")


def _validate_phase_widths(cfg: Config) -> None:
    """The window widths of the phase shift and synthetic lesions: one, or one per window of the
    slice pipeline (checked here, before training, rather than at the first shifted slice)."""
    a = cfg.augment
    if a is None or (a.phase_hu <= 0 and a.synth_prob <= 0) or cfg.data.pipeline == "coarse":
        return
    n, windows = len(a.window_widths_hu), cfg.data.base_channels
    if n not in (1, windows):
        raise ConfigError(
            f"augment.window_widths_hu: {n} widths for the {windows} window(s) of data.pipeline "
            f"{cfg.data.pipeline!r}; give one width, or one per window"
        )


def _validate(cfg: Config) -> None:
    """Cross-field checks of a complete configuration."""
    object.__setattr__(
        cfg.model, "options", _check_options("model", cfg.model.name, cfg.model.options)
    )
    object.__setattr__(cfg.loss, "options", _check_options("loss", cfg.loss.name, cfg.loss.options))
    t, o, s = cfg.train, cfg.optimizer, cfg.schedule
    for key, value, minimum in (
        ("train.epochs", t.epochs, 1),
        ("train.batch_size", t.batch_size, 1),
        ("train.iterations_per_epoch", t.iterations_per_epoch, 0),
        ("train.val_batch_size", t.val_batch_size, 1),
        ("train.val_every", t.val_every, 1),
        ("train.patience", t.patience, 0),
        ("train.num_workers", t.num_workers, 0),
        ("train.members", t.members, 1),
        ("schedule.step_epochs", s.step_epochs, 1),
        ("schedule.warmup_epochs", s.warmup_epochs, 0),
    ):
        if value < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    if not 0.0 <= t.foreground_fraction < 1.0:
        raise ConfigError(
            f"train.foreground_fraction must be in [0, 1), got {t.foreground_fraction}"
        )
    if o.lr <= 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {o.lr}")
    if o.weight_decay < 0 or o.grad_clip < 0:
        raise ConfigError("optimizer.weight_decay and optimizer.grad_clip must be >= 0")
    if s.name == "exponential" and not 0 < s.final_lr <= o.lr:
        raise ConfigError(
            f"schedule.final_lr must be in (0, optimizer.lr] for the exponential "
            f"schedule, got {s.final_lr}"
        )
    if t.stage != "all" and cfg.model.name != "crunet":
        raise ConfigError(
            f"train.stage={t.stage!r} applies to the crunet model only "
            f"(model.name is {cfg.model.name!r}); use 'all'"
        )
    from livseg.device import parse_device

    parse_device(t.device, "train.device")
    _validate_pipeline(cfg)
    _validate_phase_widths(cfg)
    in_ch = cfg.model.options.get("in_channels", 1)
    ctx = cfg.model.options.get("context_slices", 0)
    expected = cfg.data.base_channels
    if in_ch != expected or ctx != cfg.data.context:
        raise ConfigError(
            f"model.in_channels={in_ch} / model.context_slices={ctx} do not match the "
            f"pre-processing (data.pipeline={cfg.data.pipeline!r} gives {expected} channel(s) "
            f"per slice, data.context={cfg.data.context})"
        )


# --- files --------------------------------------------------------------------------------
CONFIG_ALIASES = {"densefcn_tumor": "densefcn_tumour"}
"""Other spellings users type -> bundled configuration name (livseg spells it "tumour")."""


def bundled_configs() -> list[str]:
    """Names of the configurations shipped inside the package (``livseg/configs/*.json``)."""
    folder = resources.files("livseg") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def _read_json(path: Path | Any, source: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read ({exc})") from exc


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a configuration file or a bundled configuration, then apply overrides.

    Args:
        name_or_path: Path to a JSON file, or the name of a bundled configuration
            (see :func:`bundled_configs`), e.g. ``"crunet_mdice"``.
        overrides: ``section.key=value`` strings, see
            :func:`livseg.train.overrides.apply_overrides`.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: Missing file / unknown name (listing the bundled ones), bad JSON, unknown
            keys, wrong types.
    """
    path = Path(name_or_path)
    if path.is_file():
        cfg = config_from_dict(_read_json(path, str(path)), str(path))
    else:
        name = CONFIG_ALIASES.get(str(name_or_path), str(name_or_path))
        names = bundled_configs()
        if name not in names:
            raise ConfigError(
                f"{name_or_path}: no such configuration file, and not a bundled "
                f"configuration name; bundled: {', '.join(names)}"
            )
        res = resources.files("livseg") / "configs" / f"{name}.json"
        cfg = config_from_dict(_read_json(res, f"bundled configuration {name}"), name)
    if overrides:
        from livseg.train.overrides import apply_overrides

        cfg = apply_overrides(cfg, list(overrides))
    return cfg
