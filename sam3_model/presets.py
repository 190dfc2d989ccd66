"""Named model configurations with random weights: `sam3-random`, `small` (CPU demo) and `tiny` (tests).

`small` and `tiny` are random-init models sized for this project's CPU work; `sam3-random` is transformers'
default `Sam3Config()` (about 840M parameters), the architecture of `facebook/sam3` with random weights: for
memory and speed measurements, never for predictions. Its old name `sam3` is refused with the new spelling,
because it read like the released model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Sam3Config

from .errors import ModelLoadError

PATCH_SIZE = 14


@dataclass(frozen=True)
class PresetSpec:
    """Sizes of a random-init preset (all transformer widths behind the ViT share `width`)."""

    image_size: int
    vit_width: int
    vit_layers: int
    vit_heads: int
    width: int
    heads: int
    text_width: int
    text_layers: int
    num_queries: int
    decoder_layers: int
    encoder_layers: int
    geometry_layers: int
    ffn: int


PRESET_SPECS: dict[str, PresetSpec] = {
    # ~2M parameters, most of them the 49,408-token text embedding: fast enough for every unit test.
    "tiny": PresetSpec(image_size=112, vit_width=64, vit_layers=2, vit_heads=2, width=32, heads=2,
                       text_width=32, text_layers=2, num_queries=20, decoder_layers=2, encoder_layers=1,
                       geometry_layers=1, ffn=64),
    # The CPU demo's model, sized from the CPU training notes (84 px, ~0.3M trained parameters besides the text
    # embedding, few queries): learns the procedural toy domain from scratch in minutes on 2 cores.
    "small": PresetSpec(image_size=84, vit_width=64, vit_layers=2, vit_heads=2, width=32, heads=2,
                        text_width=32, text_layers=2, num_queries=10, decoder_layers=3, encoder_layers=1,
                        geometry_layers=1, ffn=128),
}
DEFAULT_HUB_ID = "facebook/sam3"
FULL_SIZE_PRESET = "sam3-random"
PRESETS: tuple[str, ...] = (FULL_SIZE_PRESET, *PRESET_SPECS)
RENAMED_PRESETS = {"sam3": FULL_SIZE_PRESET}  # old name -> new name


def _config_from_spec(spec: PresetSpec, image_size: int | None) -> Sam3Config:
    from transformers import Sam3Config

    size = image_size or spec.image_size
    if size % PATCH_SIZE:
        raise ModelLoadError(f"image_size {size} is not a multiple of the patch size {PATCH_SIZE}")
    grid = size // PATCH_SIZE
    vision = dict(
        backbone_config=dict(
            model_type="sam3_vit_model", hidden_size=spec.vit_width, intermediate_size=4 * spec.vit_width,
            num_hidden_layers=spec.vit_layers, num_attention_heads=spec.vit_heads, image_size=size,
            patch_size=PATCH_SIZE, window_size=8, global_attn_indexes=[spec.vit_layers - 1],
            pretrain_image_size=size,
        ),
        fpn_hidden_size=spec.width,
        backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
    )
    text = dict(
        model_type="clip_text_model", hidden_size=spec.text_width, intermediate_size=4 * spec.text_width,
        num_hidden_layers=spec.text_layers, num_attention_heads=2, projection_dim=spec.text_width,
        vocab_size=49408, max_position_embeddings=32,
    )
    block = dict(hidden_size=spec.width, num_attention_heads=spec.heads, intermediate_size=spec.ffn)
    return Sam3Config(
        vision_config=vision,
        text_config=text,
        geometry_encoder_config=dict(block, num_layers=spec.geometry_layers),
        detr_encoder_config=dict(block, num_layers=spec.encoder_layers),
        detr_decoder_config=dict(block, num_layers=spec.decoder_layers, num_queries=spec.num_queries),
        mask_decoder_config=dict(hidden_size=spec.width, num_attention_heads=spec.heads),
    )


def build_config(preset: str, image_size: int | None = None) -> Sam3Config:
    """The `Sam3Config` of a named preset; `image_size` overrides the input resolution."""
    from transformers import Sam3Config

    if preset in RENAMED_PRESETS:
        raise ModelLoadError(renamed_preset_message(preset))
    if preset == FULL_SIZE_PRESET:
        if image_size not in (None, 1008):
            raise ModelLoadError(f"the {FULL_SIZE_PRESET} preset is the released architecture; its input size is 1008")
        return Sam3Config()
    if preset not in PRESET_SPECS:
        raise ModelLoadError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return _config_from_spec(PRESET_SPECS[preset], image_size)


def _shape(config: dict[str, Any]) -> tuple:
    """What tells architectures apart: ViT width and depth, decoder width, depth and queries."""
    backbone = config.get("vision_config", {}).get("backbone_config", {})
    decoder = config.get("detr_decoder_config", {})
    return (backbone.get("hidden_size"), backbone.get("num_hidden_layers"), decoder.get("hidden_size"),
            decoder.get("num_layers"), decoder.get("num_queries"))


def matching_preset(config: dict[str, Any]) -> str | None:
    """The preset whose architecture a model's config.json (as a mapping) has, ignoring resolution; else None."""
    shape = _shape(config)
    for preset in PRESETS:
        if _shape(build_config(preset).to_dict()) == shape:
            return preset
    return None


def is_explicit_path(source: str) -> bool:
    """Whether `source` can only be a path (./x, ../x, /x, ~/x, or with a backslash), never a preset or Hub id."""
    return source.startswith(("/", "./", "../", "~", ".\\")) or "\\" in source


def renamed_preset_message(name: str) -> str:
    """The one-line answer to an old preset name."""
    return (f"{name!r} is no longer a preset name: use {RENAMED_PRESETS[name]} for the released architecture with "
            f"random weights, facebook/sam3 for the released model, or ./{name} for a folder of that name")


def input_size(config: Sam3Config) -> int:
    """Square input resolution (pixels) the model's ViT expects."""
    size = config.vision_config.backbone_config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def init_for_scratch_training(model: Any) -> None:
    """Re-initialise a random model so it can learn from scratch (irrelevant when loading real weights).

    transformers draws every weight from N(0, 0.02); from scratch the FPN outputs then vanish and the ViT gets
    almost no gradient. Variance-preserving convs, xavier linears and reference boxes spread over the image fix
    that (see the CPU training notes).
    """
    import torch
    from torch import nn

    with torch.no_grad():
        _init_for_scratch_training(model, torch, nn)


def _init_for_scratch_training(model: Any, torch: Any, nn: Any) -> None:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_uniform_(module.weight, nonlinearity="linear")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    decoder = model.detr_decoder
    num_queries = decoder.reference_points.weight.shape[0]
    side = math.ceil(math.sqrt(num_queries))
    generator = torch.Generator().manual_seed(0)
    idx = torch.arange(num_queries)
    centres = torch.stack([(idx % side + 0.5) / side, (idx // side + 0.5) / side], dim=-1)
    sizes = torch.empty(num_queries, 2).uniform_(0.1, 0.3, generator=generator)
    boxes = torch.cat([centres, sizes], dim=-1).clamp(1e-3, 1 - 1e-3)  # (Q, 4) cxcywh, normalised
    decoder.reference_points.weight.copy_(torch.logit(boxes))
