"""Checking a config: the plain dict of a config dataclass and back, with every key and
value checked against the dataclass's fields and type hints; errors name the dotted key."""
from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from typing import Any, Literal, Mapping


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an impossible value."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError for ``key`` unless ``condition`` holds (used by ``__post_init__``)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


# --------------------------------------------------------------------------- dict <-> dataclass
def to_dict(cfg: Any) -> dict:
    """The plain nested dict of a config dataclass (YAML- and JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, raw: Mapping[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``, checking keys and types; errors name the dotted key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; valid keys here: {sorted(names)}")
    values = {name: _check_type(hints[name], raw[name], _join(path, name)) for name in raw}
    try:
        return cls(**values)
    except ValueError as err:  # __post_init__ checks (ConfigError here, ValueError in leaf packages)
        raise ConfigError(f"{path + '.' if path else ''}{err}") from None


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict, _BRIEF.maxstring, _BRIEF.maxother = 2, 4, 4, 80, 80


def brief(value: Any) -> str:
    """A bounded repr for messages: a YAML of nested aliases expands to billions of items,
    which a plain repr would print (minutes, gigabytes)."""
    return _BRIEF.repr(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_type(hint: Any, value: Any, path: str) -> Any:
    """Return ``value`` checked (and int->float widened) against type ``hint``."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{path}: {brief(value)} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _check_type(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[-1])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {brief(value)}")
        (item,) = typing.get_args(hint)
        return [_check_type(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {brief(value)}")
        _, item = typing.get_args(hint)
        return {k: _check_type(item, v, _join(path, str(k))) for k, v in value.items()}
    if hint is Any or hint is dict:
        return value
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null, got {brief(value)}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{path}: expected {hint.__name__}, got bool {brief(value)}")
    if not isinstance(value, hint):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {type(value).__name__} {brief(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # YAML's .inf / .nan: no key means them
        raise ConfigError(f"{path}: must be a finite number, got {brief(value)}")
    return value




def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"video": {"size": 224}} -> {"video.size": 224}."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
