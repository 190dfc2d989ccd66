"""SAM 3 on transformers' `Sam3Model`: loading, prompting, the official training objective, LoRA, export.

The floor of the project: it knows SAM 3 and nothing of Lightning, datasets on disk or recipes. Names are
imported on first use (`sam3_model.load_model` imports torch then), so `import sam3_model.configs` and the
command line's help stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoraSettings": "settings", "freeze_components": "adapters", "prepare_for_training": "adapters",
    "enable_dac": "dac", "DetectorOutputs": "detector", "LayerPredictions": "detector", "run_detector": "detector",
    "ConfigError": "errors", "ImageError": "errors", "ModelLoadError": "errors", "PromptError": "errors",
    "Sam3AdaptError": "errors", "TargetError": "errors", "export_adapter": "export", "export_merged": "export",
    "export_video": "export", "build_processor": "loading", "load_model": "loading", "ModelCardInfo": "model_card",
    "ObjectiveConfig": "settings", "Sam3Criterion": "objective", "ConceptSegmenter": "predict",
    "write_coco_results": "predict", "ConceptPrompt": "records", "ConceptResult": "records", "Instance": "records",
    "ConceptTargets": "targets",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sam3_model' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
