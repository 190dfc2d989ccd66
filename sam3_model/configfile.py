"""Plain YAML config files mapped onto typed dataclasses, with one-line errors that name the file and key.

Every key is documented once, on its dataclass field; unknown keys, wrong types and bad `Literal` choices are
`ConfigError`s such as "recipe.yaml: teacher.threshold: expected a number, got 'high'".
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from .errors import ConfigError

T = TypeVar("T")


def load_yaml_or_json(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a YAML (or JSON, a subset of it) file, or a `ConfigError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the {what} file ({getattr(err, 'strerror', None) or err})") from None
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: {what} file does not parse ({str(err).splitlines()[0]})") from None


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (list, tuple):
        return "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against the type `tp` (dataclasses recursively)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: expected {' or '.join(_describe(o) for o in options if o is not type(None))}, got {value!r}")
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return dataclass_from_mapping(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        converted = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_t, val_t = typing.get_args(tp) or (Any, Any)
        return {_convert(k, key_t, where): _convert(v, val_t, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def dataclass_from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build the dataclass `cls` from a parsed mapping; unknown or missing keys are `ConfigError`s at `where`."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        shown = [name for name in fields if name != "base_dir"]  # set by the loaders, not by users
        prefix = where if where.endswith(":") else f"{where}:"
        raise ConfigError(f"{prefix} unknown key {unknown[0]!r}; allowed: {', '.join(shown)}")
    kwargs = {}
    for name, f in fields.items():
        key_where = f"{where}.{name}" if not where.endswith(":") else f"{where} {name}"
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key_where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_where}: missing (required)")
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a check in the dataclass's __post_init__: say where it failed
        raise ConfigError(f"{where} {err}" if where.endswith(":") else f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def load_dataclass(cls: type[T], path: str | os.PathLike[str], what: str) -> T:
    """Read a YAML/JSON file into the dataclass `cls`."""
    return dataclass_from_mapping(cls, load_yaml_or_json(path, what), f"{path}:")
