"""Configs: YAML files and command lines parsed onto typed dataclasses by jsonargparse, with one-line errors.

Every verb and every config file speaks the same language: a dataclass's fields are its keys (documented once,
on the field), nested dataclasses are dotted sections (`train.steps`, `teacher.threshold`), and overrides on
the command line use jsonargparse's spelling (`--train.steps=200`). Loading checks keys and types, runs the
dataclasses' own checks, and turns every problem into a `ConfigError` naming the file and the key, with a
"did you mean" for a misspelt key.

Paths are made absolute once, at load: a field whose metadata says `path` is resolved against the folder of the
file it was written in (`resolve_paths`), `model` fields only when such a folder exists there (else it is a Hub
id or a preset). Values given on the command line resolve against the working directory. An fsspec URL
(`s3://bucket/photos`, see `storage.is_url`) is left as it is written.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from .errors import ConfigError
from .storage import is_url

T = TypeVar("T")
PATH = {"path": "file"}  # field metadata: a file or folder path, resolved against the config's folder
MODEL = {"path": "model"}  # field metadata: a model folder under the config's folder, else a Hub id or preset


def read_config_file(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a YAML (or JSON, a subset of it) file, or a `ConfigError` naming it, the line and the column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the {what} file ({getattr(err, 'strerror', None) or err})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML: {problem}{at}") from None


# ------------------------------------------------------------------------------------------------ parsing


def dataclass_parser(cls: type, *, exit_on_error: bool = False):
    """A jsonargparse parser whose root keys are the fields of the dataclass `cls`."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=exit_on_error)
    parser.add_class_arguments(cls, None, fail_untyped=False)
    return parser


def parse_dataclass(cls: type[T], data: Any, source: str) -> T:
    """Build the dataclass `cls` from a parsed mapping; every problem is a `ConfigError` naming `source`."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of {cls.__name__} keys, got {data!r}")
    check_keys(cls, data, source)
    parser = dataclass_parser(cls)
    try:
        namespace = parser.parse_object(dict(data))
        init = parser.instantiate(namespace)
    except ConfigError as err:  # a nested dataclass's own check: say which section
        key = failing_section(cls, data)
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{err}") from None
    except Exception as err:  # noqa: BLE001 - jsonargparse's ArgumentError and the like: one line
        raise ConfigError(f"{source}: {argument_message(str(err), cls, data)}") from None
    return build(cls, init, source)


def build(cls: type[T], init: Any, source: str) -> T:
    """`cls(**fields)` from an instantiated namespace, its own checks' `ConfigError`s naming `source`."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {name: init[name] for name in names if name in init}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from None


def check_keys(cls: type, data: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Refuse unknown keys at every level of `data` (jsonargparse ignores unknown root keys of an object)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for key, value in data.items():
        if key not in fields:
            where = f"{prefix}{key}"
            raise ConfigError(f"{source}: unknown key {where!r}{did_you_mean(key, fields, prefix)}")
        inner = _dataclass_of(hints[key])
        if inner is not None and isinstance(value, Mapping):
            check_keys(inner, value, source, f"{prefix}{key}.")


def failing_section(cls: type, data: Mapping[str, Any], prefix: str = "") -> str:
    """The dotted key of the innermost nested section whose own check refuses it ("" when none does alone)."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        inner = _dataclass_of(hints.get(key)) if key in hints else None
        if inner is None or not isinstance(value, Mapping):
            continue
        deeper = failing_section(inner, value, f"{prefix}{key}.")
        if deeper:
            return deeper
        try:
            parser = dataclass_parser(inner)
            build(inner, parser.instantiate(parser.parse_object(dict(value))), "")
        except Exception:  # noqa: BLE001 - this section is (or holds) the one that fails
            return f"{prefix}{key}"
    return ""


def did_you_mean(key: str, choices: Any, prefix: str = "") -> str:
    """"; did you mean 'x'?" for the closest of `choices`, or an empty string."""
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass in a type (`X`, `X | None`), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


_EXPECTED = re.compile(r'Parser key "([^"]+)":\s*Expected a (.+?)\. Got value: (.*)', re.S)
_GROUP = re.compile(r"Group '([^']+)' does not accept (?:nested key|option) '([^']+)'")
_TYPE_WORDS = {"<class 'int'>": "an integer", "<class 'float'>": "a number", "<class 'bool'>": "true or false",
               "<class 'str'>": "a string"}


def argument_message(text: str, cls: type | None = None, data: Mapping[str, Any] | None = None) -> str:
    """jsonargparse's error as one line in this project's words ("train.steps: expected an integer, got 'x'")."""
    match = _EXPECTED.search(text)
    if match:
        key, expected, got = match.group(1), match.group(2).strip(), match.group(3).strip().splitlines()[0]
        expected = _TYPE_WORDS.get(expected, expected)
        return f"{_qualified(key, data) if data else key}: expected {expected}, got {got!r}"
    required = re.search(r"the following arguments are required: ([\w.,\s]+)", text)
    if required:
        return f"{required.group(1).strip()}: missing (required)"
    match = _GROUP.search(text)
    if match:
        group, key = match.group(1), match.group(2)
        hint = did_you_mean(key, _field_names(cls, group)) if cls is not None else ""
        return f"{group}: unknown key {key!r}{hint}"
    return " ".join(text.split())


def _qualified(key: str, data: Mapping[str, Any]) -> str:
    """`key` with the sections above it, when jsonargparse names it relative to a nested optional section."""
    return _find_key(key.split(".")[0], data) + key


def _find_key(head: str, data: Mapping[str, Any], prefix: str = "") -> str:
    """The dotted prefix of the first mapping in `data` (depth first) that holds `head`; "" when it is the top."""
    if head in data:
        return prefix
    for name, value in data.items():
        if isinstance(value, Mapping):
            found = _find_key(head, value, f"{prefix}{name}.")
            if found:
                return found
    return ""


def _field_names(cls: type, dotted: str) -> list[str]:
    """The field names of the dataclass at `dotted` under `cls` (empty when there is none)."""
    for part in dotted.split("."):
        hints = typing.get_type_hints(cls)
        inner = _dataclass_of(hints.get(part))
        if inner is None:
            return []
        cls = inner
    return [f.name for f in dataclasses.fields(cls)]


# ------------------------------------------------------------------------------------------------ paths


def resolve_mapping_paths(cls: type, data: Any, base: str | os.PathLike[str]) -> Any:
    """A copy of a parsed mapping whose path fields (per `cls`'s field metadata) are absolute against `base`."""
    if not isinstance(data, Mapping) or not dataclasses.is_dataclass(cls):
        return data
    hints = typing.get_type_hints(cls)
    kinds = {f.name: f.metadata.get("path") for f in dataclasses.fields(cls)}
    out = dict(data)
    for key, value in data.items():
        if key not in hints:
            continue
        if kinds.get(key):
            out[key] = _resolve(value, kinds[key], Path(base))
            continue
        inner = _dataclass_of(hints[key])
        if inner is not None:
            out[key] = resolve_mapping_paths(inner, value, base)
        elif typing.get_origin(hints[key]) in (list, tuple) and isinstance(value, list):
            args = typing.get_args(hints[key])
            item = _dataclass_of(args[0]) if args else None
            if item is not None:
                out[key] = [resolve_mapping_paths(item, v, base) for v in value]
    return out


def _resolve(value: Any, kind: str, base: Path) -> Any:
    if isinstance(value, list):
        return [_resolve(v, kind, base) for v in value]
    if not isinstance(value, str) or not value or os.path.isabs(value) or is_url(value):
        return value  # absolute, an fsspec URL (kept as text), an inline mapping or unset
    candidate = base / Path(value).expanduser()
    if kind == "model" and not candidate.is_dir():
        return value  # a Hub id or a preset
    return str(candidate.resolve()) if candidate.exists() else str(base.resolve() / value)


def resolve_paths(obj: T, base: str | os.PathLike[str]) -> T:
    """`obj` (a dataclass) with its relative path fields made absolute against `base` (e.g. the working directory
    for values typed on the command line); nested dataclasses and lists of them included."""
    if not dataclasses.is_dataclass(obj):
        return obj
    changes = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("path"):
            resolved = _resolve(value, f.metadata["path"], Path(base))
            if resolved != value:
                changes[f.name] = resolved
        elif dataclasses.is_dataclass(value):
            new = resolve_paths(value, base)
            if new is not value:
                changes[f.name] = new
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            changes[f.name] = [resolve_paths(v, base) for v in value]
    return dataclasses.replace(obj, **changes) if changes else obj


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in key by key (mappings recursively; anything else replaced)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
