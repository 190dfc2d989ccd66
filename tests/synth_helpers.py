"""Small data-engine configs for the tests: the toy domain, the tiny random teacher, a few shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synth.config import SynthConfig, synth_config_from_mapping

ONTOLOGY = {"concepts": [
    {"name": "striped red square", "parent": "red square"},
    {"name": "blue circle", "hard_negatives": ["blue triangle"]},
]}


def toy_config(tmp: Path, num_images: int = 6, shard_size: int = 2, **overrides: Any) -> SynthConfig:
    """A toy-domain run with the tiny teacher at low thresholds (random weights score low)."""
    data: dict[str, Any] = {
        "ontology": ONTOLOGY,
        "source": {"toy": {"num_images": num_images, "size": 112, "seed": 0}},
        "teacher": {"model": "tiny", "threshold": 0.2, "candidate_threshold": 0.05},
        "verify": {"geometric": {}, "teacher_confidence": {}},
        "run": {"shard_size": shard_size, "progress": False, "accelerator": "cpu"},
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return synth_config_from_mapping(data, "test config:", tmp)
