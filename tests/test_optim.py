"""AdamW parameter groups: the official per-component lrs, ViT layer-wise decay and weight-decay rule, with and
without peft LoRA."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import Sam3Model

from adapt.training.optim import (
    OptimizerConfig,
    build_optimizer,
    param_groups,
    vit_num_layers,
)
from sam3_model.adapters import LoraSettings, apply_lora, freeze_components
from sam3_model.errors import ConfigError
from sam3_model.presets import build_config

VIT = "vision_encoder.backbone."


@pytest.fixture(scope="module")
def full_meta() -> nn.Module:
    """The released architecture (32 ViT layers) on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return Sam3Model(build_config("sam3-random"))


def by_param(model: nn.Module, groups: list[dict]) -> dict[str, dict]:
    """Parameter name -> its group, checking that no parameter is in two groups."""
    group_of_id: dict[int, dict] = {}
    for group in groups:
        for param in group["params"]:
            assert id(param) not in group_of_id, "a parameter is in two groups"
            group_of_id[id(param)] = group
    return {name: group_of_id[id(p)] for name, p in model.named_parameters() if id(p) in group_of_id}


def test_full_model_reference_lrs_and_weight_decay(full_meta):
    groups = param_groups(full_meta, OptimizerConfig())
    g = by_param(full_meta, groups)
    assert set(g) == {n for n, _ in full_meta.named_parameters()}  # everything trains, each once
    assert len({grp["name"] for grp in groups}) == len(groups)  # unique names for LearningRateMonitor

    def lr(name: str) -> float:
        return g[name]["lr"]

    assert lr(f"{VIT}layers.31.attention.q_proj.weight") == pytest.approx(2.25e-5, rel=1e-12)
    assert lr(f"{VIT}layers.31.mlp.fc2.bias") == pytest.approx(2.5e-5 * 0.9, rel=1e-12)
    assert lr(f"{VIT}layers.0.attention.q_proj.weight") == pytest.approx(2.5e-5 * 0.9**32, rel=1e-12)
    assert lr(f"{VIT}layers.0.attention.q_proj.weight") == pytest.approx(8.58e-7, rel=1e-3)  # reference's 8.6e-7
    assert lr(f"{VIT}layers.15.mlp.fc1.weight") == pytest.approx(2.5e-5 * 0.9**17, rel=1e-12)
    assert lr(f"{VIT}embeddings.patch_embeddings.projection.weight") == pytest.approx(2.5e-5 * 0.9**33, rel=1e-12)
    assert lr(f"{VIT}layer_norm.weight") == pytest.approx(2.5e-5 * 0.9**33, rel=1e-12)  # ln_pre
    assert lr(f"{VIT}embeddings.position_embeddings") == 2.5e-5
    assert lr("vision_encoder.neck.fpn_layers.0.proj1.weight") == 2.5e-5
    assert lr("vision_encoder.neck.fpn_layers.3.proj2.bias") == 2.5e-5
    assert lr("text_encoder.text_model.embeddings.token_embedding.weight") == 5e-6
    assert lr("text_projection.weight") == 5e-6
    for name in ("detr_decoder.layers.0.self_attn.q_proj.weight", "detr_encoder.layers.0.self_attn.q_proj.weight",
                 "dot_product_scoring.query_proj.weight", "mask_decoder.pixel_decoder.norms.0.weight",
                 "geometry_encoder.layers.0.self_attn.q_proj.weight"):
        assert lr(name) == 8e-5, name

    def wd(name: str) -> float:
        return g[name]["weight_decay"]

    assert wd(f"{VIT}layers.31.attention.q_proj.weight") == 0.1
    assert wd(f"{VIT}layers.31.attention.q_proj.bias") == 0.0
    assert wd(f"{VIT}layers.31.layer_norm1.weight") == 0.0  # LayerNorm weight, no "bias" in the name
    assert wd(f"{VIT}layer_norm.weight") == 0.0
    assert wd(f"{VIT}embeddings.position_embeddings") == 0.1  # embeddings keep decay
    assert wd("mask_decoder.pixel_decoder.norms.0.weight") == 0.1  # GroupNorm is not a LayerNorm
    assert wd("detr_decoder.presence_layer_norm.weight") == 0.0
    assert wd("detr_decoder.layers.0.mlp_layer_norm.weight") == 0.0
    assert wd("text_encoder.text_model.final_layer_norm.weight") == 0.0
    assert wd("detr_decoder.layers.0.self_attn.q_proj.weight") == 0.1
    assert wd("vision_encoder.neck.fpn_layers.0.proj1.weight") == 0.1
    assert g[f"{VIT}layers.31.attention.q_proj.weight"]["name"] == "vision.layer31"
    assert g[f"{VIT}layers.31.layer_norm1.weight"]["name"] == "vision.layer31.no_decay"
    assert g["detr_decoder.layers.0.self_attn.q_proj.bias"]["name"] == "rest.no_decay"
    assert g["text_projection.weight"]["name"] == "text"


def test_every_layer_norm_param_is_undecayed(full_meta):
    g = by_param(full_meta, param_groups(full_meta, OptimizerConfig()))
    norms = [f"{m}.{p}" for m, mod in full_meta.named_modules() if isinstance(mod, nn.LayerNorm)
             for p, _ in mod.named_parameters(recurse=False)]
    assert len(norms) > 300
    assert all(g[n]["weight_decay"] == 0.0 for n in norms)
    decayed = [n for n, grp in g.items() if grp["weight_decay"] > 0]
    assert decayed and not any("bias" in n for n in decayed)


def test_frozen_params_are_absent_and_config_is_applied(full_meta):
    config = OptimizerConfig(lr=1e-4, vision_lr=1e-5, text_lr=1e-6, layer_decay=0.5, weight_decay=0.05)
    try:
        freeze_components(full_meta, ("text",))
        groups = param_groups(full_meta, config)
    finally:
        for p in full_meta.parameters():
            p.requires_grad_(True)
    g = by_param(full_meta, groups)
    assert not [n for n in g if n.startswith(("text_encoder.", "text_projection."))]
    assert not [grp for grp in groups if grp["name"].startswith("text")]
    assert g[f"{VIT}layers.30.mlp.fc1.weight"]["lr"] == pytest.approx(1e-5 * 0.5**2)
    assert g[f"{VIT}layers.30.mlp.fc1.weight"]["weight_decay"] == 0.05
    assert g["detr_decoder.layers.0.self_attn.q_proj.weight"]["lr"] == 1e-4


def test_build_optimizer_is_adamw_with_the_groups(full_meta):
    opt = build_optimizer(full_meta, OptimizerConfig(betas=(0.8, 0.95), eps=1e-6))
    assert isinstance(opt, torch.optim.AdamW)
    assert all(grp["betas"] == (0.8, 0.95) and grp["eps"] == 1e-6 for grp in opt.param_groups)
    names = {grp["name"]: grp for grp in opt.param_groups}
    assert names["vision.layer31"]["lr"] == pytest.approx(2.25e-5)
    assert names["rest.no_decay"]["weight_decay"] == 0.0
    assert sum(len(grp["params"]) for grp in opt.param_groups) == len(list(full_meta.parameters()))


def test_lora_wrapped_tiny_model(tiny):
    model, _ = tiny
    peft_model = apply_lora(model, LoraSettings(preset="all_attn_heads"))
    groups = param_groups(peft_model, OptimizerConfig())
    g = by_param(peft_model, groups)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert set(g) == trainable  # frozen base weights and `original_module`s are absent
    assert not [n for n in g if "base_layer" in n or "original_module" in n]
    assert vit_num_layers(peft_model) == 2  # tiny: 2 ViT layers -> num_layers 3

    prefix = "base_model.model.vision_encoder.backbone.layers."
    lora_1 = f"{prefix}1.attention.q_proj.lora_A.default.weight"
    lora_0 = f"{prefix}0.attention.v_proj.lora_B.default.weight"
    assert g[lora_1]["lr"] == pytest.approx(2.5e-5 * 0.9) and g[lora_1]["name"] == "vision.layer1"
    assert g[lora_0]["lr"] == pytest.approx(2.5e-5 * 0.9**2) and g[lora_0]["weight_decay"] == 0.1
    decoder_lora = "base_model.model.detr_decoder.layers.0.vision_cross_attn.q_proj.lora_A.default.weight"
    assert g[decoder_lora]["lr"] == 8e-5 and g[decoder_lora]["name"] == "rest"
    # modules_to_save copies: the heads' component ("rest"), a copied LayerNorm stays undecayed
    norm_copy = "base_model.model.detr_decoder.presence_layer_norm.modules_to_save.default.weight"
    head_copy = "base_model.model.dot_product_scoring.modules_to_save.default.query_proj.weight"
    assert g[norm_copy]["name"] == "rest.no_decay" and g[norm_copy]["weight_decay"] == 0.0
    assert g[head_copy]["name"] == "rest" and g[head_copy]["weight_decay"] == 0.1
    assert not [grp for grp in groups if grp["name"].startswith("text")]


def test_vit_layers_counted_without_a_config(tiny):
    model, _ = tiny
    bare = nn.ModuleDict({"vision_encoder": model.vision_encoder, "detr_decoder": model.detr_decoder})
    assert vit_num_layers(bare) == 2
    g = by_param(bare, param_groups(bare, OptimizerConfig()))
    assert g[f"{VIT}layers.1.attention.q_proj.weight"]["lr"] == pytest.approx(2.5e-5 * 0.9)
    assert g[f"{VIT}embeddings.patch_embeddings.projection.weight"]["lr"] == pytest.approx(2.5e-5 * 0.9**3)


def test_nothing_trainable_is_a_config_error(tiny):
    model, _ = tiny
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="trainable"):
        param_groups(model, OptimizerConfig())


@pytest.mark.parametrize("kwargs", [{"lr": -1.0}, {"layer_decay": 0.0}, {"layer_decay": 1.5},
                                    {"weight_decay": -0.1}, {"betas": (0.9, 1.0)}, {"eps": 0.0}])
def test_invalid_config(kwargs):
    with pytest.raises(ConfigError):
        OptimizerConfig(**kwargs)
