"""Where files live: local paths, or fsspec URLs (`s3://`, `gs://`, `memory://`, `file://`...), read alike.

The one rule for every layer: text that starts with `protocol://` (chained ones too, `simplecache::s3://`) is a
URL; anything else is a local path. A URL stays text all the way (a `Path` would collapse its `//`), is never made
absolute against a config's folder, and is listed and read through fsspec. fsspec's protocol drivers (s3fs,
gcsfs, adlfs...) are installed separately and take their credentials from their usual environment variables and
config files; a missing driver or an unknown protocol is a one-line `ConfigError` naming the package to install.

File-level problems are left to the caller, which knows what the file is: `FileNotFoundError`, `IsADirectoryError`
and other `OSError`s propagate as they are (fsspec raises the built-in ones), and a driver's own exception (no
credentials, a client error) becomes an `OSError` naming the URL, so callers catch one kind.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from .errors import ConfigError

_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*::)*([A-Za-z][A-Za-z0-9+.-]+)://")
_MAGIC = re.compile(r"[*?\[]")
T = TypeVar("T")


def is_url(path: Any) -> bool:
    """Whether `path` is an fsspec URL (`protocol://...`, `file://` included) rather than a local path."""
    return isinstance(path, str) and _URL.match(path) is not None


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, its path) of a URL; a missing driver or unknown protocol is a `ConfigError`."""
    import fsspec.core
    from fsspec.registry import known_implementations

    match = _URL.match(url)
    protocol = match.group(1) if match else "?"
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:
        cls = known_implementations.get(protocol, {}).get("class", "")
        package = cls.split(".")[0] if cls else None
        todo = f"pip install {package}" if package else "install the fsspec driver of this protocol"
        raise ConfigError(f"{url}: reading {protocol}:// URLs needs a package that is not installed ({err}); "
                          f"{todo}") from None
    except ValueError as err:
        raise ConfigError(f"{url}: not a URL fsspec can open ({err})") from None


def open_binary(path: str | os.PathLike[str]) -> IO[bytes]:
    """A binary read handle on a local file or a URL (a context manager; errors are the caller's to name)."""
    if is_url(path):
        fs, inner = filesystem(path)
        return _remote(path, lambda: fs.open(inner, "rb"))
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a local file or a URL."""
    if is_url(path):
        fs, inner = filesystem(path)
        return _remote(path, lambda: fs.cat_file(inner))
    with open(path, "rb") as handle:
        return handle.read()


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a local path or a URL exists (file or folder)."""
    if is_url(path):
        fs, inner = filesystem(path)
        return bool(_remote(path, lambda: fs.exists(inner)))
    return os.path.exists(path)


def is_dir(path: str | os.PathLike[str]) -> bool:
    """Whether a local path or a URL is a folder (an object-store prefix counts)."""
    if is_url(path):
        fs, inner = filesystem(path)
        return bool(_remote(path, lambda: fs.isdir(inner)))
    return os.path.isdir(path)


def is_file(path: str | os.PathLike[str]) -> bool:
    """Whether a local path or a URL is a file."""
    if is_url(path):
        fs, inner = filesystem(path)
        return bool(_remote(path, lambda: fs.isfile(inner)))
    return os.path.isfile(path)


def join(root: str | os.PathLike[str], name: str) -> Path | str:
    """`name` (relative) under `root`: a `Path` for a local folder, a URL string for a URL ("." and ".." collapsed)."""
    if is_url(root):
        prefix = _URL.match(root).group(0)
        rest = root[len(prefix):].rstrip("/")
        joined = f"{rest}/{name.replace(os.sep, '/')}" if rest else name.replace(os.sep, "/")
        if any(part in (".", "..") for part in joined.split("/")):
            joined = posixpath.normpath(joined)
        return prefix + joined
    return Path(root) / name


def parent(path: str | os.PathLike[str]) -> Path | str:
    """The folder of a local path (a `Path`) or of a URL (a URL string, its protocol kept)."""
    if is_url(path):
        prefix = _URL.match(path).group(0)
        rest = path[len(prefix):].rstrip("/")
        return prefix + (rest.rsplit("/", 1)[0] if "/" in rest else "")
    return Path(path).parent


def name_of(path: str | os.PathLike[str]) -> str:
    """The last component of a local path or a URL ("a.jpg" of "s3://bucket/photos/a.jpg")."""
    return posixpath.basename(str(path).rstrip("/")) if is_url(path) else Path(path).name


def list_files(url: str, recursive: bool = True) -> list[str]:
    """Every file under the folder URL `url` (its subfolders too when `recursive`), as URLs spelt like `url`."""
    fs, root = filesystem(url)
    found = _remote(url, lambda: fs.find(root, maxdepth=None if recursive else 1))
    return [_respell(fs, url, root, p) for p in found]


def glob_files(pattern: str) -> list[str]:
    """The files matching a URL glob pattern ("**" any depth), as URLs spelt like the pattern."""
    fs, inner = filesystem(pattern)
    magic = _MAGIC.search(pattern)
    literal = pattern if magic is None else pattern[: magic.start()].rsplit("/", 1)[0]
    root = filesystem(literal)[1] if is_url(literal) else ""
    found = _remote(pattern, lambda: fs.glob(inner, detail=True))
    return [_respell(fs, literal, root, p) for p, info in sorted(found.items()) if info.get("type") == "file"]


def _remote(url: str, call: Callable[[], T]) -> T:
    """`call()`, a driver's own exception turned into an `OSError` naming `url` (`OSError`s pass as they are)."""
    try:
        return call()
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - botocore, google-auth... each driver raises its own kinds
        raise OSError(f"{url}: {type(err).__name__}: {err}") from err


def _respell(fs: Any, prefix_url: str, prefix_path: str, found: str) -> str:
    """The URL of a found file system path: `prefix_url` + its part below `prefix_path` (else fsspec's URL)."""
    head = prefix_path.rstrip("/")
    if head and found.rstrip("/") == head:
        return prefix_url
    if head and found.startswith(head + "/"):
        return f"{prefix_url.rstrip('/')}/{found[len(head) + 1:]}"
    return fs.unstrip_protocol(found)
