"""Choose what of a `Sam3Model` trains: freeze named components, attach peft LoRA, enable activation checkpointing.

Components partition every parameter of `Sam3Model` by name prefix (`heads` wins over `decoder`):

| component      | module-name prefixes |
|----------------|----------------------|
| `vision`       | `vision_encoder.` (ViT backbone and FPN neck) |
| `text`         | `text_encoder.`, `text_projection.` (CLIP text tower and SAM 3's projection of it) |
| `geometry`     | `geometry_encoder.` (exemplar-box prompts) |
| `detr_encoder` | `detr_encoder.` |
| `decoder`      | `detr_decoder.` except its heads (layers, queries, reference points, ...) |
| `mask_decoder` | `mask_decoder.` |
| `heads`        | `dot_product_scoring.`, `detr_decoder.{box_head,presence_head,presence_layer_norm}.` |

The text encoder stays frozen by default (`frozen=("text",)`), with or without LoRA. Fine-tuning it on a small,
narrow-vocabulary domain set is the main reported cause of adapted models that ignore the prompt: the text
embeddings of the few training phrases collapse together, and the detector learns to find "the domain objects"
whatever the phrase. No LoRA preset touches it; unfreeze it only deliberately (`frozen=()`) with varied phrases.

LoRA presets (`LORA_PRESETS`, peft full-match regexes over module names):

- `vision_attn`: q/k/v/o of every ViT layer.
- `detr_attn`: q/k/v/o of every DETR encoder and decoder attention, plus the mask decoder (its prompt
  cross-attention and its mask-embedding MLP). Recommended when the adapted detector will drive video
  tracking: `Sam3VideoModel`'s tracker reads the detector's ViT output, so ViT LoRA shifts the tracker's
  features while this preset leaves them untouched.
- `all_attn`: `vision_attn` + `detr_attn` + the geometry encoder's attentions. Never the text encoder.
- `all_attn_heads`: `all_attn`, and the scoring, box and presence heads trained *fully* through peft
  `modules_to_save` (a trainable copy of each head, saved with the adapter and merged on export). The heads
  are small (1.4 M parameters at full size) and hold the score calibration that shifts most with a new domain;
  LoRA on them would be awkward (`box_head.layer3` has 4 outputs, `presence_head.layer3` one, fewer than r).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from .errors import ConfigError
from .settings import LoraSettings

COMPONENTS: dict[str, tuple[str, ...]] = {
    "vision": ("vision_encoder.",),
    "text": ("text_encoder.", "text_projection."),
    "geometry": ("geometry_encoder.",),
    "detr_encoder": ("detr_encoder.",),
    "decoder": ("detr_decoder.",),
    "mask_decoder": ("mask_decoder.",),
    "heads": (
        "dot_product_scoring.",
        "detr_decoder.box_head.",
        "detr_decoder.presence_head.",
        "detr_decoder.presence_layer_norm.",
    ),
}

_QKVO = r"(q_proj|k_proj|v_proj|o_proj)"
_VISION_ATTN = rf"vision_encoder\.backbone\.layers\.\d+\.attention\.{_QKVO}"
_DETR_ATTN = rf"detr_(encoder|decoder)\.layers\.\d+\.\w+_attn\.{_QKVO}"
_MASK_DECODER = rf"mask_decoder\.(prompt_cross_attn\.{_QKVO}|mask_embedder\.layers\.\d+)"
_GEOMETRY_ATTN = rf"geometry_encoder\.layers\.\d+\.\w+_attn\.{_QKVO}"


def _any_of(*patterns: str) -> str:
    return "|".join(f"({p})" for p in patterns)


_ALL_ATTN = _any_of(_VISION_ATTN, _DETR_ATTN, _MASK_DECODER, _GEOMETRY_ATTN)
LORA_PRESETS: dict[str, str] = {
    "vision_attn": _VISION_ATTN,
    "detr_attn": _any_of(_DETR_ATTN, _MASK_DECODER),
    "all_attn": _ALL_ATTN,
    "all_attn_heads": _ALL_ATTN,  # + HEAD_MODULES trained fully (modules_to_save)
}
HEAD_MODULES: tuple[str, ...] = ("dot_product_scoring", "box_head", "presence_head", "presence_layer_norm")
PRESET_MODULES_TO_SAVE: dict[str, tuple[str, ...]] = {"all_attn_heads": HEAD_MODULES}


def base_model(model: nn.Module) -> nn.Module:
    """The underlying `Sam3Model` of a peft-wrapped model (the model itself otherwise)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def component_of(name: str) -> str:
    """The component that owns a parameter or module name of `Sam3Model` (peft wrappers' names included)."""
    for component in ("heads", *COMPONENTS):  # heads first: they sit inside detr_decoder
        if any(name.startswith(prefix) for prefix in COMPONENTS[component]):
            return component
    raise ConfigError(f"{name!r} belongs to no component of {', '.join(COMPONENTS)}; is this a Sam3Model?")


def _check_components(names: Iterable[str]) -> tuple[str, ...]:
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise ConfigError(f"unknown component(s) {', '.join(map(repr, unknown))}: choose from {', '.join(COMPONENTS)}")
    return names


def freeze_components(model: nn.Module, frozen: Iterable[str]) -> None:
    """Set `requires_grad=False` on every parameter (LoRA ones included) of the named components."""
    frozen = set(_check_components(frozen))
    for name, param in base_model(model).named_parameters():
        if component_of(name) in frozen:
            param.requires_grad_(False)


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Parameter counts per component, flat and loggable: `<component>/trainable`, `<component>/total`, `all/...`.

    Totals include LoRA parameters, and under `modules_to_save` both the frozen original and the trained copy.
    """
    summary = {f"{c}/{kind}": 0 for c in (*COMPONENTS, "all") for kind in ("trainable", "total")}
    for name, param in base_model(model).named_parameters():
        for component in (component_of(name), "all"):
            summary[f"{component}/total"] += param.numel()
            if param.requires_grad:
                summary[f"{component}/trainable"] += param.numel()
    return summary


def lora_config(settings: LoraSettings) -> LoraConfig:
    """The peft `LoraConfig` of `settings` (unknown preset -> ConfigError)."""
    if settings.preset not in LORA_PRESETS:
        raise ConfigError(f"unknown LoRA preset {settings.preset!r}: choose from {', '.join(LORA_PRESETS)}")
    if settings.r < 1 or settings.alpha <= 0 or not 0.0 <= settings.dropout < 1.0:
        raise ConfigError(f"invalid LoRA settings {settings}: need r >= 1, alpha > 0 and 0 <= dropout < 1")
    modules_to_save = PRESET_MODULES_TO_SAVE.get(settings.preset)
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=LORA_PRESETS[settings.preset],
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )


def apply_lora(model: nn.Module, settings: LoraSettings) -> PeftModel:
    """Wrap `model` with LoRA adapters (in place, as peft does); only adapters and `modules_to_save` train."""
    config = lora_config(settings)
    if isinstance(model, PeftModel):
        raise ConfigError("the model already has peft adapters; apply LoRA to a plain Sam3Model")
    return get_peft_model(model, config)


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0 (deterministic train-mode outputs; overfitting checks)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Checkpoint the ViT and CLIP layers (non-reentrant); `Sam3Model` needs its support flag set on the instance."""
    base = base_model(model)
    base.supports_gradient_checkpointing = True  # the layers support it; transformers' class flag is False
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def prepare_for_training(
    model: nn.Module,
    *,
    lora: LoraSettings | None,
    frozen: Sequence[str] = ("text",),
    activation_checkpointing: bool = False,
) -> nn.Module:
    """Make `model` ready to train: LoRA (or full fine-tuning) with `frozen` components frozen, optional checkpointing.

    Without LoRA every parameter outside `frozen` trains (full fine-tuning). With LoRA, peft freezes all but the
    adapters and the preset's `modules_to_save`; `frozen` then must not name a component the preset adapts.
    An already peft-wrapped model keeps its adapters as the trainable set (`lora` must be None); `frozen` and
    checkpointing still apply. Returns the model to train (the peft wrapper under LoRA); `model` is modified
    in place.
    """
    frozen = _check_components(frozen)
    if isinstance(model, PeftModel):
        if lora is not None:
            raise ConfigError("the model already has peft adapters; pass lora=None to keep training them")
    elif lora is None:
        for param in model.parameters():
            param.requires_grad_(True)
    else:
        clash = sorted(set(adapted_components(model, lora)) & set(frozen))
        if clash:
            raise ConfigError(f"LoRA preset {lora.preset!r} adapts {', '.join(clash)}, which `frozen` lists; "
                              "drop it from `frozen` or choose another preset")
        model = apply_lora(model, lora)
    freeze_components(model, frozen)
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def adapted_components(model: nn.Module, settings: LoraSettings) -> tuple[str, ...]:
    """The components whose modules `settings` would adapt (LoRA targets or `modules_to_save`) in `model`."""
    config = lora_config(settings)
    saved = set(config.modules_to_save or ())
    found = {
        component_of(f"{name}.")
        for name, _ in base_model(model).named_modules()
        if name and (re.fullmatch(config.target_modules, name) or name.rsplit(".", 1)[-1] in saved)
    }
    return tuple(c for c in COMPONENTS if c in found)
