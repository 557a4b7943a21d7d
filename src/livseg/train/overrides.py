"""Command-line overrides of a configuration: ``section.key=value`` strings (``--set``).

``value`` is parsed as JSON when it parses (``3``, ``1e-4``, ``true``, ``[[0, 100]]``) and taken
as a string otherwise; the result is type-checked like a configuration file
(:func:`livseg.train.config.config_from_dict`), and an unknown key is an error that lists the
valid ones::

    cfg = apply_overrides(load_config("crunet_mdice"), ["train.epochs=3", "model.base_width=16"])
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from livseg.train.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    field_types,
)

__all__ = ["apply_overrides"]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass type of a field (also inside ``X | None``), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for a in typing.get_args(tp):
        if dataclasses.is_dataclass(a):
            return a
    return None


def _parse_override(item: str) -> tuple[str, list[str], Any]:
    """``"section.key=value"`` -> (key text, key parts, parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, _, text = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key")
    return key, parts, _parse_value(text.strip())


def _set_key(
    section: dict[str, Any], key: str, parts: list[str], section_cls: type | None, value: Any
) -> None:
    """Set ``section.key`` of a dataclass section, checking that the key exists."""
    if len(parts) != 2:
        raise ConfigError(f"--set {key}: expected section.key=value")
    if section_cls is None:
        raise ConfigError(f"--set {key}: {parts[0]!r} has no keys; use {parts[0]}=value")
    valid = list(field_types(section_cls))
    if parts[1] not in valid:
        raise ConfigError(
            f"--set {key}: unknown key {parts[1]!r} in {parts[0]!r}; valid keys: {', '.join(valid)}"
        )
    section[parts[1]] = value


def _set_registry_entry(
    section: dict[str, Any], key: str, parts: list[str], section_cls: type | None, value: Any
) -> None:
    """``model.<x>`` / ``loss.<x>``: the name, or a constructor option (checked later)."""
    if parts[1] not in ("name", "options"):
        parts = [parts[0], "options", *parts[1:]]
    if parts[1] != "options":
        _set_key(section, key, parts, section_cls, value)
        return
    if len(parts) != 3:
        raise ConfigError(f"--set {key}: expected {parts[0]}.<option>=value")
    section["options"][parts[2]] = value


def _apply_override(d: dict[str, Any], item: str) -> None:
    """Apply one override to the configuration dict ``d`` (in place)."""
    key, parts, value = _parse_override(item)
    sections = [f.name for f in dataclasses.fields(Config)]
    if parts[0] not in sections:
        raise ConfigError(
            f"--set {key}: unknown section {parts[0]!r}; valid: {', '.join(sections)}"
        )
    section_cls = _dataclass_in(field_types(Config)[parts[0]])
    if len(parts) == 1:
        if section_cls is not None and not (value is None or isinstance(value, dict)):
            raise ConfigError(
                f"--set {key}: give a key inside {parts[0]!r}, e.g. {parts[0]}.<key>=value"
            )
        d[parts[0]] = value
        return
    if d[parts[0]] is None:  # e.g. augment was null: start from the defaults
        d[parts[0]] = {}
    if parts[0] in ("model", "loss"):
        _set_registry_entry(d[parts[0]], key, parts, section_cls, value)
    else:
        _set_key(d[parts[0]], key, parts, section_cls, value)


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``section.key=value`` overrides and validate the result.

    ``model.<option>`` and ``loss.<option>`` set constructor options (``model.options.<option>``
    works too); ``model.name=...`` switches the network.

    Args:
        config: The configuration to start from.
        overrides: Strings ``"section.key=value"``; ``value`` is JSON or a bare string.

    Returns:
        A new, validated configuration.

    Raises:
        ConfigError: Malformed override, unknown key (listing the valid ones), wrong type.
    """
    d = config_to_dict(config)
    for item in overrides:
        _apply_override(d, item)
    return config_from_dict(d, "--set")
