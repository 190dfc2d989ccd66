"""Image sources: where a synthetic-data run's images come from (see `base` for the contract).

Names are imported on first use, so reading a config does not import every source's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExactInstance": "base", "ImageSource": "base", "ProducedImage": "base", "SourceSkip": "base", "Task": "base",
    "CopyPasteConfig": "copy_paste", "CopyPasteSource": "copy_paste", "GenerateConfig": "generate",
    "GenerateSource": "generate", "InpaintConfig": "generate", "PoolConfig": "pool", "PoolSource": "pool",
    "ToyConfig": "toy", "ToySource": "toy", "parse_toy_phrase": "toy", "render_toy_image": "toy",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'synth.sources' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
