"""A pool of existing (unlabelled) images: a folder, a glob, a list file and/or tar shards.

This is the SAM 3 paper's own kind of synthetic data: real photos of the domain, labelled later by the teacher
and the verifiers. `plan()` lists the pool (sorted, deterministic; tar shards by their headers, no image is
decoded); `produce` decodes each image (EXIF orientation applied, RGB). A file whose decoded pixels equal the
file as stored is handed on as `file=` (the run links or copies it instead of re-encoding); a missing, empty or
undecodable image becomes a `SourceSkip` whose reason names the path.

Tasks are {"key", "path"} for files and {"key", "tar", "member"} for tar members; paths are absolute. Any of
`folder`, `glob`, `list_file`, a tar shard or a list file's entry may be an fsspec URL (`s3://bucket/photos`,
`file:///data/x.tar`; see `sam3_model.storage`): it is listed and read through fsspec, and its tasks carry URLs,
spelt as the config spells the root; a remote image that equals its stored pixels is handed on with its bytes
(`data=`), which the run writes into its folder as they are.
"""

from __future__ import annotations

import contextlib
import functools
import glob as globlib
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, ImageOps

from sam3_model import storage
from sam3_model.configs import PATH
from sam3_model.errors import ConfigError, ImageError

from .base import ProducedImage, SourceSkip, Task

DEFAULT_EXTENSIONS = [".jpg", ".jpeg", ".png", ".webp", ".bmp"]
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_ORIENTATION = 0x0112  # EXIF tag
T = TypeVar("T")


@dataclass
class PoolConfig:
    """Where the pool's images are: at least one of `folder`, `glob`, `list_file`, `tars` (local, or fsspec URLs)."""

    folder: str | None = field(default=None, metadata=PATH)  # a folder of images (subfolders too when `recursive`)
    glob: str | None = field(default=None, metadata=PATH)  # a glob pattern, "**" matching any depth
    #                                                        (e.g. "/data/photos/**/*.jpg")
    list_file: str | None = field(default=None, metadata=PATH)  # a text file of image paths, one a line ("#"
    #                               comments and blank lines ignored); relative to the list file's folder
    tars: list[str] = field(default_factory=list, metadata=PATH)  # tar shards (.tar, .tar.gz, .tgz): their image members
    recursive: bool = True  # `folder`: include subfolders
    extensions: list[str] = field(default_factory=lambda: list(DEFAULT_EXTENSIONS))  # image file name endings
    #                                                          kept from folder, glob and tars (case-insensitive)
    limit: int | None = None  # keep only the first N images of the sorted pool (None: all)


def _describe(config: PoolConfig) -> str:
    parts = []
    if config.folder is not None:
        parts.append(f"folder {config.folder}")
    if config.glob is not None:
        parts.append(f"glob {config.glob!r}")
    if config.list_file is not None:
        parts.append(f"list file {config.list_file}")
    if config.tars:
        parts.append(f"tar shard(s) {', '.join(config.tars)}")
    return ", ".join(parts)


def _has_extension(name: str, extensions: Sequence[str]) -> bool:
    lower = name.lower()
    return any(lower.endswith(ext) for ext in extensions)


def _normalise_extensions(extensions: Sequence[str]) -> list[str]:
    return [e.lower() if e.startswith(".") else "." + e.lower() for e in extensions]


def _safe(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:limit] or "img"


def _short_hash(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:10]


def file_key(path: str) -> str:
    """A stable, file-name-safe key of an image file: its stem and a short hash of the absolute path (or URL)."""
    return f"{_safe(Path(storage.name_of(path)).stem)}-{_short_hash(path)}"


def member_key(tar: str, member: str) -> str:
    """A stable, file-name-safe key of a tar member: shard stem, member stem and a hash of both."""
    shard = storage.name_of(tar)
    for suffix in TAR_SUFFIXES:
        if shard.lower().endswith(suffix):
            shard = shard[: -len(suffix)]
            break
    return f"{_safe(shard, 24)}.{_safe(Path(member).stem)}-{_short_hash(tar, member)}"


@contextlib.contextmanager
def _open_tar(tar: str) -> Iterator[tarfile.TarFile]:
    """A tar shard (a local path or a URL) opened for reading, compression detected."""
    if not storage.is_url(tar):
        with tarfile.open(tar, "r:*") as archive:
            yield archive
        return
    with storage.open_binary(tar) as handle, tarfile.open(fileobj=handle, mode="r:*") as archive:
        yield archive


def _tar_members(tar: str, extensions: Sequence[str]) -> list[str]:
    try:
        with _open_tar(tar) as archive:
            return [m.name for m in archive.getmembers() if m.isfile() and _has_extension(m.name, extensions)]
    except (OSError, tarfile.TarError, EOFError) as err:
        raise ConfigError(f"pool: cannot read tar shard {tar} ({type(err).__name__}: {err})") from None


def _remote(what: str, url: str, call: Callable[[], T]) -> T:
    """`call()` on a URL; its failure (unreachable, refused) a one-line `ConfigError` naming `what` and the URL."""
    try:
        return call()
    except OSError as err:  # storage turns every driver's failure into one
        raise ConfigError(f"pool: cannot read {what} {url} ({type(err).__name__}: {err})") from None


def _folder_files(folder: str, recursive: bool, extensions: Sequence[str]) -> list[str]:
    """The image files of a folder (or folder URL), absolute paths or URLs."""
    if storage.is_url(folder):
        if not _remote("folder", folder, lambda: storage.is_dir(folder)):
            raise ConfigError(f"pool: folder {folder} does not exist or is not a folder")
        found = _remote("folder", folder, lambda: storage.list_files(folder, recursive))
        return [url for url in found if _has_extension(storage.name_of(url), extensions)]
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"pool: folder {folder} does not exist or is not a folder")
    walk = root.rglob("*") if recursive else root.glob("*")
    return [os.path.abspath(p) for p in walk if p.is_file() and _has_extension(p.name, extensions)]


def _glob_files(pattern: str, extensions: Sequence[str]) -> list[str]:
    """The image files a glob pattern (or URL pattern) matches, absolute paths or URLs."""
    if storage.is_url(pattern):
        found = _remote("glob", pattern, lambda: storage.glob_files(pattern))
        return [url for url in found if _has_extension(url, extensions)]
    return [os.path.abspath(p) for p in globlib.glob(pattern, recursive=True)
            if os.path.isfile(p) and _has_extension(p, extensions)]


def _listed_files(list_file: str) -> list[str]:
    """The entries of a list file (or list file URL), whatever their ending: relative ones against its folder, URLs
    as they are."""
    try:
        lines = storage.read_bytes(list_file).decode("utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"pool: list file {list_file} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"pool: cannot read list file {list_file} "
                          f"({getattr(err, 'strerror', None) or err})") from None
    folder = storage.parent(list_file)
    files = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if storage.is_url(entry):
            files.append(entry)
        elif storage.is_url(folder) and not os.path.isabs(entry):
            files.append(str(storage.join(folder, entry)))
        else:  # a local list file's entry, or an absolute local path in a remote one
            files.append(os.path.abspath(os.path.join(folder, entry)))
    return files


def list_pool(config: PoolConfig) -> list[Task]:
    """Every image of the pool as a task, sorted by path (then tar member); `ConfigError` if there is none."""
    if config.folder is None and config.glob is None and config.list_file is None and not config.tars:
        raise ConfigError("pool: give at least one of folder, glob, list_file or tars")
    if config.limit is not None and config.limit < 1:
        raise ConfigError(f"pool: limit must be at least 1 (or null for all), got {config.limit}")
    extensions = _normalise_extensions(config.extensions)
    files: set[str] = set()
    if config.folder is not None:
        files.update(_folder_files(config.folder, config.recursive, extensions))
    if config.glob is not None:
        files.update(_glob_files(config.glob, extensions))
    if config.list_file is not None:
        files.update(_listed_files(config.list_file))
    tasks: list[tuple[tuple[str, str], Task]] = [((f, ""), {"key": file_key(f), "path": f}) for f in files]
    for tar in config.tars:
        remote = storage.is_url(tar)
        if not (_remote("tar shard", tar, functools.partial(storage.is_file, tar)) if remote else os.path.isfile(tar)):
            raise ConfigError(f"pool: tar shard {tar} does not exist")
        shard = tar if remote else os.path.abspath(tar)
        tasks.extend(((shard, m), {"key": member_key(shard, m), "tar": shard, "member": m})
                     for m in _tar_members(shard, extensions))
    tasks.sort(key=lambda item: item[0])
    out = [task for _, task in tasks]
    if not out:
        raise ConfigError(f"pool: no image ({', '.join(extensions)}) found in {_describe(config)}")
    return out[: config.limit] if config.limit is not None else out


def describe_task(task: Task) -> str:
    """Where a pool task's image is, for messages and provenance: a path, or "shard.tar::member"."""
    return f"{task['tar']}::{task['member']}" if "tar" in task else str(task["path"])


def pool_provenance(task: Task) -> dict[str, Any]:
    """{"kind": "pool", "path": ...} (with "tar" and "member" for a tar member)."""
    if "tar" in task:
        return {"kind": "pool", "path": describe_task(task), "tar": task["tar"], "member": task["member"]}
    return {"kind": "pool", "path": task["path"]}


def _decode(data: io.BytesIO | str) -> tuple[Image.Image, bool]:
    """The decoded RGB image and whether it equals the stored pixels (no EXIF rotation, stored as RGB)."""
    with Image.open(data) as opened:
        opened.load()
        orientation = opened.getexif().get(_ORIENTATION, 1)
        stored_rgb = opened.mode == "RGB"
        rotated = ImageOps.exif_transpose(opened) if orientation not in (None, 1) else opened
        image = rotated.convert("RGB")
    return image, stored_rgb and orientation in (None, 1)


def open_pool_image(task: Task, archive: tarfile.TarFile | None = None) -> tuple[Image.Image, bool]:
    """Decode a pool task's image: (RGB image, pixels equal the stored file); `ImageError` "path: cannot decode (..)".

    `archive`: the task's tar shard already open (saves re-opening it for each member).
    """
    image, as_stored, _ = _open_pool_image(task, archive)
    return image, as_stored


def _open_pool_image(task: Task, archive: tarfile.TarFile | None = None) -> tuple[Image.Image, bool, bytes | None]:
    """`open_pool_image`, and the stored bytes of an image read from a URL (None for local files and members)."""
    where = describe_task(task)
    try:
        if "tar" in task:
            if archive is None:
                with _open_tar(task["tar"]) as opened:
                    data = _read_member(opened, task["tar"], task["member"])
            else:
                data = _read_member(archive, task["tar"], task["member"])
            if not data:
                raise ImageError(f"{where}: cannot decode (empty member)")
            image, _ = _decode(io.BytesIO(data))
            return image, False, None
        path = task["path"]
        if storage.is_url(path):
            try:
                data = storage.read_bytes(path)
            except FileNotFoundError:
                raise ImageError(f"{where}: cannot decode (file not found)") from None
            if not data:
                raise ImageError(f"{where}: cannot decode (empty file)")
            image, as_stored = _decode(io.BytesIO(data))
            return image, as_stored, data
        if not os.path.exists(path):
            raise ImageError(f"{where}: cannot decode (file not found)")
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise ImageError(f"{where}: cannot decode (empty file)")
        return (*_decode(path), None)
    except (ImageError, ConfigError):  # a ConfigError: no driver for the URL's protocol, not a bad image
        raise
    except Exception as err:  # noqa: BLE001 (PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...)
        raise ImageError(f"{where}: cannot decode ({type(err).__name__}: {err})") from None


def _read_member(archive: tarfile.TarFile, tar: str, member: str) -> bytes:
    handle = archive.extractfile(member)
    if handle is None:
        raise ImageError(f"{tar}::{member}: cannot decode (not a regular file)")
    with handle:
        return handle.read()


class PoolSource:
    """Existing images, as they are (no labels): the paper's synthetic (SYN) data kind."""

    name = "pool"

    def __init__(self, config: PoolConfig, ontology: Any = None) -> None:
        self.config = config
        self.ontology = ontology  # unused: a pool's images carry no labels
        self._tasks: list[Task] | None = None

    def plan(self) -> list[Task]:
        """Every image of the pool, sorted; `ConfigError` naming the folder/glob when there is none."""
        if self._tasks is None:
            self._tasks = list_pool(self.config)
        return [dict(t) for t in self._tasks]

    def setup(self, device: str) -> None:
        """Nothing to load."""

    def produce(self, tasks: Sequence[Task]) -> list[ProducedImage | SourceSkip]:
        """Decode each task's image; an unreadable one becomes a `SourceSkip` naming its path."""
        archives: dict[str, tarfile.TarFile | None] = {}
        results: list[ProducedImage | SourceSkip] = []
        with contextlib.ExitStack() as stack:
            for task in tasks:
                archive = None
                if "tar" in task:
                    if task["tar"] not in archives:
                        try:
                            archives[task["tar"]] = stack.enter_context(_open_tar(task["tar"]))
                        except Exception:  # noqa: BLE001 (reported per member by open_pool_image)
                            archives[task["tar"]] = None
                    archive = archives[task["tar"]]
                try:
                    image, as_stored, data = _open_pool_image(task, archive)
                except ImageError as err:
                    results.append(SourceSkip(task["key"], str(err)))
                    continue
                file: Path | str | None = None
                if as_stored and "path" in task:  # a URL stays text; its bytes go with it
                    file = task["path"] if storage.is_url(task["path"]) else Path(task["path"])
                results.append(ProducedImage(task["key"], image, pool_provenance(task), file=file,
                                             data=data if file is not None else None))
        return results
