"""Config files and the command line: dataclass defaults -> YAML file -> ``key=value``
overrides, resolved once; the resolved config written back as YAML."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from pipeline.config.checking import ConfigError, from_dict, to_dict
from pipeline.config.components import resolve_components
from pipeline.config.sections import Config
from pipeline.writing import write_text_atomic


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``1e-4`` (YAML 1.1 needs ``1.0e-4``,
    so ``train.lr=1e-4`` would otherwise arrive as a string)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)


# --------------------------------------------------------------------------- merging
def deep_merge(base: dict, update: Mapping[str, Any]) -> dict:
    """Merge ``update`` into a copy of ``base``. A component section whose ``type`` changes
    is replaced, not merged, so keys of the old type never leak into the new one."""
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            if "type" in value and old.get("type") not in (None, value["type"]):
                merged[key] = dict(value)
            else:
                merged[key] = deep_merge(old, value)
        else:
            merged[key] = value
    return merged


YAML_NULLS = ("null", "Null", "NULL", "~")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML: 3, 0.5, true, [a, b], null).

    A value YAML reads as a string (or as nothing: ``#...`` is a YAML comment) is taken as
    typed, unless quoted: ``output_dir=/runs/exp #2`` keeps its ``#2`` (YAML would drop it as a
    comment) and a newline stays a newline (YAML folds it to a space)."""
    key, sep, raw_value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    try:
        value = _load_yaml_text(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as err:
        if raw_value.lstrip()[:1] in ("[", "{", "'", '"'):
            raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None
        value = raw_value  # e.g. a path holding ": "
    quoted = raw_value.strip()[:1] in ("'", '"')
    if not quoted and (isinstance(value, str) or (value is None and raw_value.strip() not in YAML_NULLS)):
        value = raw_value
    return key.split("."), value


def apply_override(raw: dict, keys: list[str], value: Any) -> dict:
    """Set ``raw[k0][k1]...[kn] = value`` in a copy, as a one-key merge."""
    update: Any = value
    for key in reversed(keys):
        update = {key: update}
    return deep_merge(raw, update)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = _load_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason}); "
                          "save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


def resolve_raw(cls: type, yaml_path: str | Path | None, overrides: Sequence[str]) -> dict:
    """Defaults of ``cls`` -> YAML file -> overrides, as a raw nested dict (not yet checked)."""
    raw = to_dict(cls())
    if yaml_path:
        raw = deep_merge(raw, load_yaml(yaml_path))
    for text in overrides:
        raw = apply_override(raw, *parse_override(text))
    return raw


def load_config(yaml_path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The resolved, validated :class:`Config` (component sections completed with defaults)."""
    cfg = from_dict(Config, resolve_raw(Config, yaml_path, overrides))
    return resolve_components(cfg)


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Rebuild a resolved Config from its dict (as stored in a checkpoint or config.yaml)."""
    return resolve_components(from_dict(Config, raw))




def dump_yaml(cfg: Any, path: str | Path) -> None:
    """Write a config (dataclass or dict) as YAML, atomically."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def format_config(cfg: Any) -> str:
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return yaml.safe_dump(data, sort_keys=False).rstrip()
