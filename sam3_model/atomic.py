"""Atomic file writes: a temp file in the target's directory, then `os.replace`, so a crash never leaves half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def umask() -> int:
    """The process umask (os.umask can only be read by setting it; it is restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(handle)` on a temp file in `path`'s directory, fsync, then `os.replace` it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(fd, 0o666 & ~umask())  # mkstemp makes it owner-only; give it an ordinary file's mode
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically (never half-written)."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
