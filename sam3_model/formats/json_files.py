"""Reading JSON dataset and prediction files: one clear `DatasetError` per failure, fast on large files; and
telling a dataset's format (SA-Co or COCO) from its content."""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import storage
from ..errors import DatasetError


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: parsing makes millions of objects and no cycles, and the
    collector's full passes over them cost more than the parse itself on large files."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Parse the JSON file or URL `path` (a `what` file: "ground truth", "predictions"), or one clear `DatasetError`."""
    try:
        if storage.is_url(path):
            text = storage.read_bytes(path).decode("utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, expected a {what} JSON file") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: {what} file is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the {what} file ({err.strerror or err})") from None
    try:
        with gc_paused():
            return json.loads(text)
    except json.JSONDecodeError as err:
        hint = "; the file looks truncated" if _unclosed(text) else ""
        raise DatasetError(
            f"{path}: {what} file is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno}){hint}"
        ) from None


def _unclosed(text: str) -> bool:
    """Whether the text ends inside a string or with brackets left open (a cut-off file); only on errors."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
    return in_string or depth > 0


def require_keys(entry: Any, keys: Iterable[str], where: str) -> None:
    """Raise a `DatasetError` naming `where` unless `entry` is a JSON object holding every key."""
    if not isinstance(entry, Mapping):
        raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
    for key in keys:
        if key not in entry:
            raise DatasetError(f"{where}: missing required key {key!r}")


def detect_format(gt_json: Any, source: str = "ground truth") -> str:
    """The format: "saco" when the images carry `text_input`, "coco" when there are named categories; else a `DatasetError`."""
    if not isinstance(gt_json, dict) or not isinstance(gt_json.get("images"), list):
        raise DatasetError(f"{source}: not a COCO-style ground-truth file (expected an object with an 'images' list)")
    if any(isinstance(img, dict) and "text_input" in img for img in gt_json["images"]):
        return "saco"
    categories = gt_json.get("categories")
    if isinstance(categories, list) and categories and all(isinstance(c, dict) and "name" in c for c in categories):
        return "coco"
    raise DatasetError(
        f"{source}: cannot tell the format: no image has 'text_input' (SA-Co) and there are no named "
        "'categories' (COCO); pass --format"
    )
