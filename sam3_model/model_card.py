"""Model cards (README.md with YAML front matter) for exported SAM 3 adaptations, written atomically."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write_text
from .errors import ConfigError

CARD_KINDS: tuple[str, ...] = ("merged", "adapter", "video")


@dataclass(frozen=True)
class ModelCardInfo:
    """What a model card says: the base model, the training data, the recipe, metrics and free-form notes."""

    base_model: str
    data: str
    recipe: str
    metrics: dict[str, float] = field(default_factory=dict)
    notes: str = ""


_TITLES = {
    "merged": "SAM 3 adapted with sam3-adapt (merged weights)",
    "adapter": "SAM 3 LoRA adapter from sam3-adapt",
    "video": "SAM 3 video model with an adapted detector (sam3-adapt)",
}
_TAGS = {
    "merged": ("sam3", "sam3-adapt", "image-segmentation", "object-detection"),
    "adapter": ("sam3", "sam3-adapt", "lora", "peft", "image-segmentation", "object-detection"),
    "video": ("sam3", "sam3-adapt", "video-segmentation", "object-tracking"),
}
_LOAD_SNIPPETS = {
    "merged": """\
```python
from transformers import Sam3Model, Sam3Processor

{setup}
model = Sam3Model.from_pretrained(MODEL_DIR).eval()
processor = Sam3Processor.from_pretrained(MODEL_DIR)
inputs = processor(images=image, text="a phrase", return_tensors="pt")
outputs = model(**inputs)
results = processor.post_process_instance_segmentation(
    outputs, threshold=0.5, mask_threshold=0.5, target_sizes=inputs["original_sizes"].tolist()
)
```""",
    "adapter": """\
```python
from peft import PeftModel
from transformers import Sam3Model

{setup}
base = Sam3Model.from_pretrained(BASE_MODEL)  # the base model named above, at the same revision
model = PeftModel.from_pretrained(base, MODEL_DIR).eval()
merged = model.merge_and_unload()  # optional: a plain Sam3Model, no peft needed at inference
```""",
    "video": """\
```python
from transformers import Sam3Model, Sam3VideoModel

{setup}
video_model = Sam3VideoModel.from_pretrained(MODEL_DIR).eval()
detector = Sam3Model.from_pretrained(MODEL_DIR)  # the adapted detector alone (tracker keys are ignored)
# Run it with the base model's Sam3VideoProcessor: init_video_session, add_text_prompt, propagate_in_video_iterator.
```""",
}


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar, quotes and colons included


def render_model_card(info: ModelCardInfo, kind: str) -> str:
    """Markdown model card for an export of `kind` (`merged`, `adapter` or `video`), with YAML front matter."""
    if kind not in CARD_KINDS:
        raise ConfigError(f"unknown model card kind {kind!r}: choose from {', '.join(CARD_KINDS)}")
    library = "peft" if kind == "adapter" else "transformers"
    front = ["---", f"library_name: {library}", f"base_model: {_yaml_str(info.base_model)}", "tags:"]
    front += [f"- {tag}" for tag in _TAGS[kind]]
    front.append("---")
    if info.metrics:
        rows = "\n".join(f"| {name} | {value:.4g} |" for name, value in info.metrics.items())
        metrics = f"| metric | value |\n|---|---|\n{rows}"
    else:
        metrics = "No metrics were recorded."
    setup = f"MODEL_DIR = {_yaml_str('path/to/this/directory')}  # or its Hub id"
    if kind == "adapter":
        setup += f"\nBASE_MODEL = {_yaml_str(info.base_model)}"
    snippet = _LOAD_SNIPPETS[kind].replace("{setup}", setup)
    sections = [
        "\n".join(front),
        f"# {_TITLES[kind]}",
        f"## Base model\n\n{info.base_model}",
        f"## Data\n\n{info.data}",
        f"## Recipe\n\n{info.recipe}",
        f"## Metrics\n\n{metrics}",
        f"## How to load\n\n{snippet}",
    ]
    if info.notes:
        sections.append(f"## Notes\n\n{info.notes}")
    return "\n\n".join(sections) + "\n"


def write_model_card(info: ModelCardInfo, kind: str, path: str | os.PathLike[str]) -> Path:
    """Render the card for `kind` and write it atomically to `path` (usually `<export dir>/README.md`)."""
    return atomic_write_text(path, render_model_card(info, kind))
