"""The one interface of every image source: plan cheap, serialisable tasks; produce images from them in batches.

A run first asks the source for its `plan()`: a deterministic list of tasks (JSON-ready dicts with a unique
"key"), cut into shards. Each shard's tasks are then `produce`d (on any rank, in any order, possibly after a
crash): the same task always yields the same image, so a resumed run equals an uninterrupted one. A task that
cannot be produced (an undecodable pool image) yields a `SourceSkip`, counted and reported, never a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from sam3_model.records import RLE

Task = dict[str, Any]  # JSON-ready; always has a unique str "key" (safe as a file name stem: [A-Za-z0-9_.-])


@dataclass
class ExactInstance:
    """An instance whose mask is exact by construction (rendered or pasted), for one phrase."""

    phrase: str
    mask: RLE  # of the produced image's (H, W)


@dataclass
class ProducedImage:
    """An image a source made or read, where it came from, and any labels that are exact by construction."""

    key: str
    image: Image.Image  # RGB
    provenance: dict[str, Any]  # JSON-ready: {"kind": "pool", "path": ...} or {"kind": "generated", "pipeline":
    #                             ..., "prompt": ..., "negative_prompt": ..., "seed": ..., "steps": ...}, etc.
    file: Path | str | None = None  # an existing file (or fsspec URL, as text) holding exactly this image (pool
    #                                 sources); None: save a PNG
    data: bytes | None = None  # the bytes of a `file` URL, already read: the run writes them, not a second download
    exact: list[ExactInstance] = field(default_factory=list)
    exact_phrases: list[str] = field(default_factory=list)  # phrases whose exact labels are exhaustive (a phrase
    #                                                          listed with no instance is an exact negative)


@dataclass
class SourceSkip:
    """A task that produced no image, and why (counted and reported in the run summary)."""

    key: str
    reason: str


@runtime_checkable
class ImageSource(Protocol):
    """Plans tasks and produces images from them; `name` goes into provenance and the summary."""

    name: str

    def plan(self) -> list[Task]:
        """Every task of the run, in a fixed order (cheap: no image is made or read here)."""
        ...

    def produce(self, tasks: Sequence[Task]) -> list[ProducedImage | SourceSkip]:
        """One result per task, in order (a batch: generators run them together)."""
        ...

    def setup(self, device: str) -> None:
        """Load models onto `device` (called once per process before the first `produce`)."""
        ...
