"""Freezing, LoRA presets, the training entry point and activation checkpointing on the tiny Sam3Model (CPU)."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from conftest import random_prompt_batch
from peft import PeftModel
from torch import nn

from sam3_model.adapters import (
    COMPONENTS,
    LORA_PRESETS,
    LoraSettings,
    adapted_components,
    apply_lora,
    base_model,
    component_of,
    freeze_components,
    prepare_for_training,
    trainable_summary,
)
from sam3_model.errors import ConfigError
from sam3_model.loading import load_model

OUTPUTS = ("pred_logits", "pred_boxes", "pred_masks", "presence_logits")
QKVO = r"(q_proj|k_proj|v_proj|o_proj)"


@pytest.fixture(scope="module")
def template() -> nn.Module:
    """The tiny preset model, built once; tests take deep copies."""
    model, _ = load_model("tiny")
    return model


@pytest.fixture
def model(template: nn.Module) -> nn.Module:
    return copy.deepcopy(template)


def inputs(batch: int = 2, size: int = 112) -> dict[str, torch.Tensor]:
    return random_prompt_batch(batch, size, seed=0)


def loss_on_all_outputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    return sum(getattr(out, key).float().pow(2).mean() for key in OUTPUTS)


@torch.no_grad()
def perturb_lora(model: nn.Module, seed: int = 0) -> None:
    """Non-zero lora_B, so that lora_A gets gradients too (peft initialises B to zero)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def adapted_names(model: PeftModel) -> set[str]:
    """Base-model names of the modules that carry a LoRA adapter."""
    return {name for name, module in base_model(model).named_modules() if hasattr(module, "lora_A")}


def saved_names(model: PeftModel) -> set[str]:
    """Base-model names of the modules trained fully through `modules_to_save`."""
    modules = base_model(model).named_modules()
    return {name for name, module in modules if type(module).__name__ == "ModulesToSaveWrapper"}


def attention_projections(model: nn.Module) -> set[str]:
    pattern = rf".*\.(\w+_attn|attention)\.{QKVO}"
    return {n for n, module in model.named_modules() if isinstance(module, nn.Linear) and re.fullmatch(pattern, n)}


@pytest.mark.parametrize("preset", ["all_attn", "all_attn_heads"])
def test_lora_gradients_reach_every_adapter_and_no_frozen_parameter(model: nn.Module, preset: str) -> None:
    trained = prepare_for_training(model, lora=LoraSettings(preset=preset, r=4, alpha=8))
    assert isinstance(trained, PeftModel)
    perturb_lora(trained)
    trained.train()
    loss_on_all_outputs(trained, inputs()).backward()

    params = dict(trained.named_parameters())
    lora = {n: p for n, p in params.items() if "lora_" in n}
    assert lora, "no LoRA parameters"
    for name, param in lora.items():
        assert param.requires_grad, name
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient on {name}"
    for name, param in params.items():
        if not param.requires_grad:
            assert param.grad is None, f"frozen {name} got a gradient"
        else:
            assert "lora_" in name or ".modules_to_save." in name, f"{name} trains but is neither LoRA nor saved"
            assert param.grad is not None, f"trainable {name} got no gradient"
    text = [(n, p) for n, p in base_model(trained).named_parameters() if component_of(n) == "text"]
    assert text and not any(p.requires_grad for _, p in text)
    if preset == "all_attn_heads":
        assert any(".modules_to_save." in n and p.requires_grad for n, p in params.items())


def test_vision_attn_touches_only_vit_attention(model: nn.Module) -> None:
    vit = {n for n in attention_projections(model) if n.startswith("vision_encoder.")}
    adapted = adapted_names(apply_lora(model, LoraSettings(preset="vision_attn")))
    assert adapted == vit and len(vit) == 4 * 2  # q/k/v/o in each of the tiny ViT's 2 layers
    assert all(re.fullmatch(rf"vision_encoder\.backbone\.layers\.\d+\.attention\.{QKVO}", n) for n in adapted)


def test_detr_attn_touches_detr_attention_and_mask_decoder_only(model: nn.Module) -> None:
    detr_and_mask = ("detr_encoder.", "detr_decoder.", "mask_decoder.")
    expected = {n for n in attention_projections(model) if n.startswith(detr_and_mask)}
    expected |= {f"mask_decoder.mask_embedder.layers.{i}" for i in range(3)}
    pm = apply_lora(model, LoraSettings(preset="detr_attn"))
    assert adapted_names(pm) == expected
    components = adapted_components(base_model(pm), LoraSettings(preset="detr_attn"))
    assert components == ("detr_encoder", "decoder", "mask_decoder")
    assert trainable_summary(pm)["vision/trainable"] == 0  # the tracker's ViT features stay untouched


def test_all_attn_covers_every_attention_but_the_text_encoder(model: nn.Module) -> None:
    expected = {n for n in attention_projections(model) if component_of(n + ".") != "text"}
    expected |= {f"mask_decoder.mask_embedder.layers.{i}" for i in range(3)}
    assert any(n.startswith("geometry_encoder.") for n in expected)
    adapted = adapted_names(apply_lora(model, LoraSettings(preset="all_attn")))
    assert adapted == expected
    assert not any(n.startswith(("text_encoder.", "text_projection")) for n in adapted)


def test_all_attn_heads_trains_the_heads_fully(model: nn.Module, template: nn.Module) -> None:
    pm = prepare_for_training(model, lora=LoraSettings(preset="all_attn_heads"))
    assert saved_names(pm) == {"dot_product_scoring", "detr_decoder.box_head", "detr_decoder.presence_head",
                               "detr_decoder.presence_layer_norm"}
    summary = trainable_summary(pm)
    heads_size = sum(p.numel() for n, p in model.named_parameters()
                     if component_of(n) == "heads" and ".original_module." in n)
    assert summary["heads/trainable"] == heads_size > 0
    assert summary["text/trainable"] == 0
    assert adapted_names(pm) == adapted_names(apply_lora(copy.deepcopy(template), LoraSettings(preset="all_attn")))


def test_preset_names_are_documented() -> None:
    assert set(LORA_PRESETS) == {"vision_attn", "detr_attn", "all_attn", "all_attn_heads"}


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_freezing_a_component_freezes_exactly_its_parameters(model: nn.Module, component: str) -> None:
    heads = ("dot_product_scoring.", "detr_decoder.box_head.", "detr_decoder.presence_head.",
             "detr_decoder.presence_layer_norm.")
    owners = {
        "vision": lambda n: n.startswith("vision_encoder."),
        "text": lambda n: n.startswith(("text_encoder.", "text_projection.")),
        "geometry": lambda n: n.startswith("geometry_encoder."),
        "detr_encoder": lambda n: n.startswith("detr_encoder."),
        "decoder": lambda n: n.startswith("detr_decoder.") and not n.startswith(heads),
        "mask_decoder": lambda n: n.startswith("mask_decoder."),
        "heads": lambda n: n.startswith(heads),
    }
    for param in model.parameters():
        param.requires_grad_(True)
    freeze_components(model, [component])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if owners[component](n)}
    assert frozen == expected and expected


def test_components_partition_the_model(model: nn.Module) -> None:
    summary = trainable_summary(model)
    total = sum(p.numel() for p in model.parameters())
    assert sum(summary[f"{c}/total"] for c in COMPONENTS) == summary["all/total"] == total


def test_unknown_names_raise_config_error(model: nn.Module) -> None:
    with pytest.raises(ConfigError, match="vision, text, geometry"):
        freeze_components(model, ["vison"])
    with pytest.raises(ConfigError, match="all_attn"):
        apply_lora(model, LoraSettings(preset="everything"))
    with pytest.raises(ConfigError, match="unknown component"):
        prepare_for_training(model, lora=None, frozen=("text", "heads_"))
    with pytest.raises(ConfigError, match="adapts vision"):
        prepare_for_training(model, lora=LoraSettings(preset="vision_attn"), frozen=("text", "vision"))
    assert not isinstance(model, PeftModel) and not adapted_names_plain(model)


def adapted_names_plain(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if hasattr(module, "lora_A")}


def test_full_fine_tuning_keeps_the_text_encoder_frozen(model: nn.Module) -> None:
    trained = prepare_for_training(model, lora=None)
    assert trained is model
    for name, param in model.named_parameters():
        assert param.requires_grad == (component_of(name) != "text"), name


def test_prepare_accepts_a_peft_model(model: nn.Module) -> None:
    pm = apply_lora(model, LoraSettings(preset="detr_attn"))
    trained = prepare_for_training(pm, lora=None, frozen=("text", "mask_decoder"), activation_checkpointing=True)
    assert trained is pm
    summary = trainable_summary(pm)
    assert summary["mask_decoder/trainable"] == 0 and summary["decoder/trainable"] > 0
    assert base_model(pm).is_activation_checkpointing
    with pytest.raises(ConfigError, match="already has peft adapters"):
        prepare_for_training(pm, lora=LoraSettings())


def _no_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.train()


@pytest.mark.parametrize("lora", [LoraSettings(preset="all_attn", r=4), None], ids=["lora", "full"])
def test_activation_checkpointing_gives_the_same_gradients(model: nn.Module, lora: LoraSettings | None) -> None:
    reference = prepare_for_training(model, lora=lora)
    perturb_lora(reference)  # (a no-op without LoRA)
    checkpointed = prepare_for_training(copy.deepcopy(reference), lora=None, activation_checkpointing=True)
    assert base_model(checkpointed).is_activation_checkpointing
    assert not base_model(reference).is_activation_checkpointing

    calls: list[int] = []
    vit_attention = base_model(checkpointed).vision_encoder.backbone.layers[0].attention  # inside the checkpoint
    vit_attention.register_forward_hook(lambda *_: calls.append(1))
    losses, grads = [], []
    for candidate in (reference, checkpointed):
        _no_dropout(candidate)
        loss = loss_on_all_outputs(candidate, inputs())
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in candidate.named_parameters() if p.requires_grad})
    assert len(calls) == 2  # the ViT layer ran again in the backward: it really was checkpointed
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert sum(g is not None for g in grads[0].values()) > 0.8 * len(grads[0])  # a few are unused (FPN level 3, ...)
    for name, grad in grads[0].items():
        assert (grad is None) == (grads[1][name] is None), name
        if grad is not None:
            torch.testing.assert_close(grad, grads[1][name], rtol=0, atol=1e-6, msg=name)
