"""Image sources: where a synthetic-data run's images come from (see `base` for the contract)."""

from .base import ExactInstance, ImageSource, ProducedImage, SourceSkip, Task
from .copy_paste import CopyPasteConfig, CopyPasteSource
from .generate import GenerateConfig, GenerateSource, InpaintConfig
from .pool import PoolConfig, PoolSource
from .toy import ToyConfig, ToySource, parse_toy_phrase, render_toy_image

__all__ = [
    "CopyPasteConfig",
    "CopyPasteSource",
    "ExactInstance",
    "GenerateConfig",
    "GenerateSource",
    "ImageSource",
    "InpaintConfig",
    "PoolConfig",
    "PoolSource",
    "ProducedImage",
    "SourceSkip",
    "Task",
    "ToyConfig",
    "ToySource",
    "parse_toy_phrase",
    "render_toy_image",
]
