"""AdamW parameter groups of SAM 3 fine-tuning: per-component base lrs, ViT layer-wise lr decay, weight-decay rule.

As the official recipe (training-objective reference, section 3):

* vision encoder (`vision_encoder.*`) at `vision_lr`, scaled layer-wise: with `L` ViT layers, `num_layers = L + 1`
  and `scale = layer_decay ** (num_layers - id)`, where `id` is 0 for the patch embeddings and the pre-norm
  (`vision_encoder.backbone.embeddings.patch_embeddings`, `vision_encoder.backbone.layer_norm`, the official
  `patch_embed` / `ln_pre`), `i + 1` for `vision_encoder.backbone.layers.i`, and `num_layers` (scale 1) for
  anything else. The position embeddings are overridden to scale 1, and the FPN neck (`vision_encoder.neck`) is
  outside the decayed trunk (scale 1). So layer `L - 1` gets `vision_lr * decay`, layer 0 `vision_lr * decay**L`.
* text (`text_encoder.*` and `text_projection.*`) at `text_lr`;
* everything else (DETR encoder/decoder, geometry encoder, mask decoder, heads) at `lr`.

Weight decay is 0 for parameters whose name contains "bias" and for every parameter of a `torch.nn.LayerNorm`
module; `weight_decay` for all others (position embeddings, GroupNorm and convs included).

peft-wrapped models work as plain ones: the `base_model.model.` prefix is ignored, so a LoRA parameter of ViT layer
i (`...layers.i.attention.q_proj.lora_A.default.weight`) gets layer i's lr, and a `modules_to_save` copy belongs to
its module's component (a copied LayerNorm is still a LayerNorm). Only parameters with `requires_grad` are grouped.
Each group carries a unique readable "name" (`vision.layer31`, `vision.embed.no_decay`, `text`, `rest.no_decay`,
...) that Lightning's `LearningRateMonitor` uses to log one lr per group.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from sam3_model.adapters import base_model
from adapt.settings import OptimizerConfig
from sam3_model.errors import ConfigError

PEFT_PREFIX = "base_model.model."
_VIT = "vision_encoder.backbone."
_VIT_LAYER = re.compile(r"vision_encoder\.backbone\.layers\.(\d+)\.")
_VIT_EMBED = (f"{_VIT}embeddings.patch_embeddings.", f"{_VIT}layer_norm.")  # official patch_embed, ln_pre: id 0
_VIT_POS = f"{_VIT}embeddings.position_embeddings"  # official pos_embed: scale overridden to 1.0
_NECK = "vision_encoder.neck."
_TEXT = ("text_encoder.", "text_projection.")



def strip_peft_prefix(name: str) -> str:
    """The `Sam3Model` parameter name of a (possibly peft-wrapped) model's parameter name."""
    return name.removeprefix(PEFT_PREFIX)


def vit_num_layers(model: nn.Module) -> int:
    """Number of ViT layers L: from the model config, else by counting `vision_encoder.backbone.layers.N`."""
    config = getattr(base_model(model), "config", None)
    try:
        return int(config.vision_config.backbone_config.num_hidden_layers)
    except AttributeError:
        indices = [int(m.group(1)) for name, _ in model.named_parameters()
                   if (m := _VIT_LAYER.match(strip_peft_prefix(name)))]
        return max(indices) + 1 if indices else 0


def _base_group(name: str, num_layers: int, config: OptimizerConfig) -> tuple[str, float]:
    """(group base name, lr) of a Sam3Model parameter name; `num_layers` = ViT layers + 1."""
    if name.startswith("vision_encoder."):
        if m := _VIT_LAYER.match(name):
            layer = int(m.group(1))
            return f"vision.layer{layer}", config.vision_lr * config.layer_decay ** (num_layers - (layer + 1))
        if name.startswith(_VIT_EMBED):
            return "vision.embed", config.vision_lr * config.layer_decay ** num_layers
        if name.startswith(_VIT_POS):
            return "vision.pos_embed", config.vision_lr
        if name.startswith(_NECK):
            return "vision.neck", config.vision_lr
        return "vision.other", config.vision_lr  # id num_layers in the trunk, or outside it: scale 1
    if name.startswith(_TEXT):
        return "text", config.text_lr
    return "rest", config.lr


def param_groups(model: nn.Module, config: OptimizerConfig) -> list[dict]:
    """AdamW parameter groups of the trainable parameters of a (peft-wrapped or plain) `Sam3Model`."""
    num_layers = vit_num_layers(model) + 1
    no_decay_ids = {id(p) for module in model.modules() if isinstance(module, nn.LayerNorm)
                    for p in module.parameters(recurse=False)}
    groups: dict[str, dict] = {}
    for full_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = strip_peft_prefix(full_name)
        base, lr = _base_group(name, num_layers, config)
        no_decay = "bias" in name or id(param) in no_decay_ids
        key = f"{base}.no_decay" if no_decay else base
        group = groups.setdefault(key, {"params": [], "lr": lr, "weight_decay": 0.0 if no_decay else
                                        config.weight_decay, "name": key})
        group["params"].append(param)
    if not groups:
        raise ConfigError("no parameter of the model is trainable (all have requires_grad=False); "
                          "unfreeze a component or attach LoRA adapters")
    return list(groups.values())


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, config)`."""
    return torch.optim.AdamW(param_groups(model, config), lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                             weight_decay=config.weight_decay)
