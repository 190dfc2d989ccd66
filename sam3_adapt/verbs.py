"""Running one verb: its jsonargparse parser (built from the function's signature and config dataclass), the old
spellings translated, the config file's paths resolved, the function called with typed values."""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from sam3_model.configs import argument_message, build, check_keys, failing_section, read_config_file, \
    resolve_mapping_paths, resolve_paths
from sam3_model.errors import ConfigError


@dataclass(frozen=True)
class Verb:
    """A verb: the function it runs ("module:function"), its help line, and for config-driven verbs the config
    dataclass whose fields are its keys and what its positional argument names."""

    target: str
    help: str
    config: str | None = None  # "module:Class": its fields are root keys, filled from the positional file
    positional: str | None = None  # "config" (a YAML file) or "recipe" (a built-in name or a YAML file)


def load(target: str) -> Any:
    """The object a "module:name" target names."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def run_verb(name: str, verb: Verb, argv: list[str]) -> Any:
    """Parse `argv` for `verb` and call its function; `ConfigError`s name the file and the key."""
    function = load(verb.target)
    config_cls = load(verb.config) if verb.config else None
    parser = verb_parser(name, function, config_cls)
    source, data = "command line", {}
    if verb.positional and argv and not argv[0].startswith("-"):
        source, data = _positional_config(verb, config_cls, argv[0])
        argv = ["--config", _yaml(data), *argv[1:]]
    argv = normalise(argv, function, parser)
    for arg in argv:  # undecodable bytes on the command line become lone surrogates: refuse them by name
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ConfigError(f"{arg[: err.start] + '?' + arg[err.end:]!r}: cannot be encoded as UTF-8 (a byte "
                              "that is not UTF-8 text on the command line)") from None
    try:
        namespace = parser.parse_args(argv)
        init = parser.instantiate(namespace)
    except ConfigError as err:  # a nested section's own check: say which, when the file's own values fail it
        key = failing_section(config_cls, data) if config_cls is not None else ""
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{err}") from None
    except SystemExit:
        raise
    except Exception as err:  # noqa: BLE001 - jsonargparse's ArgumentError and the like: one line
        raise ConfigError(_message(err, parser, config_cls, source)) from None
    skip = {"config"} if config_cls is not None else set()
    kwargs = {p: init[p] for p in inspect.signature(function).parameters if p not in skip and p in init}
    if config_cls is not None:
        kwargs["config"] = resolve_paths(build(config_cls, init, source), Path.cwd())
    return function(**kwargs)


def verb_parser(name: str, function: Any, config_cls: type | None):
    """The jsonargparse parser of a verb: `--config`, `--print_config`, the config class's fields at the root,
    and the function's own parameters."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    doc = inspect.getdoc(function) or ""
    parser = ArgumentParser(prog=f"sam3-adapt {name}", description=doc.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile,
                        help="a YAML file of these keys (`--print_config` writes one)")
    if config_cls is not None:
        parser.add_class_arguments(config_cls, None, fail_untyped=False)
        parser.add_function_arguments(function, None, skip={"config"}, fail_untyped=False, as_group=False)
    else:
        parser.add_function_arguments(function, None, fail_untyped=False, as_group=False)
    return parser


def _positional_config(verb: Verb, config_cls: type, value: str) -> tuple[str, dict[str, Any]]:
    """The file a positional argument names (a recipe may be a built-in name), its paths made absolute."""
    if verb.positional == "recipe":  # read as every recipe is read (an old `general:` section included)
        from recipes.config import recipe_mapping, recipe_path

        path = recipe_path(value)
        data = recipe_mapping(path)
        check_keys(config_cls, data, str(path))
        return str(path), data
    path = Path(value)
    data = read_config_file(path, "config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    check_keys(config_cls, data, str(path))
    return str(path), resolve_mapping_paths(config_cls, data, path.parent)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def normalise(argv: list[str], function: Any, parser: Any) -> list[str]:
    """Old spellings in today's: `--top-k 3` is `--top_k=3`, a bare `--flag` is `--flag=true`, `--image a b` and
    repeated `--image a --image b` append (`--image+=a`), `--set train.steps=50` is `--train.steps=50`."""
    hints = typing.get_type_hints(function)
    known = {a.lstrip("-").split("+")[0] for action in parser._actions for a in action.option_strings}
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--set" and i + 1 < len(argv):  # the old recipe override: `--set train.steps=50`
            out.append(f"--{argv[i + 1]}")
            i += 2
            continue
        if arg.startswith("--set="):
            out.append(f"--{arg[len('--set='):]}")
            i += 1
            continue
        if not arg.startswith("--") or arg == "--":
            out.append(arg)
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        if key not in known and key.replace("-", "_") in known:
            key = key.replace("-", "_")
        kind = _kind(hints.get(key))
        values: list[str] = []
        if eq:
            values = [value]
        else:
            while i + 1 < len(argv) and not argv[i + 1].startswith("--") and (kind == "list" or not values):
                if kind == "bool" and argv[i + 1] not in ("true", "false", "True", "False"):
                    break
                values.append(argv[i + 1])
                i += 1
        if kind == "bool" and not values:
            values = ["true"]
        if kind == "list" and not (values and values[0].lstrip().startswith("[")):
            out += [f"--{key}+={v}" for v in values]
        else:
            out += [f"--{key}={v}" for v in values] if values else [f"--{key}"]
        i += 1
    return out


def _kind(tp: Any) -> str:
    """"list" for list types, "bool" for booleans (optional ones included), "" otherwise."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
    if any(typing.get_origin(a) in (list, tuple) for a in args):
        return "list"
    return "bool" if bool in args else ""


def _message(err: Exception, parser: Any, config_cls: type | None, source: str) -> str:
    """One line for a parsing error, with "did you mean" for an unknown option or key."""
    text = str(err)
    if "unrecognized arguments:" in text:
        bad = text.split("unrecognized arguments:", 1)[1].split()[0]
        key = bad.lstrip("-").split("=")[0]
        options = sorted({a.lstrip("-") for action in parser._actions for a in action.option_strings
                          if a.startswith("--") and not a.endswith("+")})
        import difflib

        close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
        hint = f"; did you mean --{close[0]}?" if close else f"; `{parser.prog} --help` lists the keys"
        return f"unknown option {bad.split('=')[0]}{hint}"
    message = argument_message(text, config_cls)
    return f"{source}: {message}" if source != "command line" and not message.startswith(source) else message
