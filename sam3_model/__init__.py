"""SAM 3 on transformers' `Sam3Model`: loading, prompting, the official training objective, LoRA, export."""

from .adapters import LoraSettings, freeze_components, prepare_for_training
from .dac import enable_dac
from .detector import DetectorOutputs, LayerPredictions, run_detector
from .errors import ConfigError, ImageError, ModelLoadError, PromptError, Sam3AdaptError, TargetError
from .export import export_adapter, export_merged, export_video
from .loading import build_processor, load_model
from .model_card import ModelCardInfo
from .objective import ObjectiveConfig, Sam3Criterion
from .predict import ConceptSegmenter, write_coco_results
from .records import ConceptPrompt, ConceptResult, Instance
from .targets import ConceptTargets

__all__ = [
    "ConceptPrompt", "ConceptResult", "ConceptSegmenter", "ConceptTargets", "ConfigError", "DetectorOutputs",
    "ImageError", "Instance", "LayerPredictions", "LoraSettings", "ModelCardInfo", "ModelLoadError",
    "ObjectiveConfig", "PromptError", "Sam3AdaptError", "Sam3Criterion", "TargetError", "build_processor",
    "enable_dac", "export_adapter", "export_merged", "export_video", "freeze_components", "load_model",
    "prepare_for_training", "run_detector", "write_coco_results",
]
