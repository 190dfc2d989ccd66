"""Exports of an adapted tiny Sam3Model reload offline with plain transformers / peft classes and match it (CPU)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_prompt_batch
import yaml
from peft import PeftModel
from PIL import Image
from torch import nn
from transformers import Sam3Config, Sam3Model, Sam3Processor, Sam3VideoConfig, Sam3VideoModel

from sam3_model.adapters import LoraSettings, prepare_for_training
from sam3_model.errors import ConfigError
from sam3_model.export import export_adapter, export_merged, export_video
from sam3_model.loading import load_model
from sam3_model.atomic import umask
from sam3_model.model_card import ModelCardInfo, render_model_card
from sam3_model.presets import PRESET_SPECS, _config_from_spec, init_for_scratch_training

OUTPUTS = ("pred_logits", "pred_boxes", "pred_masks", "presence_logits", "semantic_seg")
CARD = ModelCardInfo(
    base_model="facebook/sam3",
    data="1,200 synthetic widget images (diffusers inpainting), 3 phrases",
    recipe="LoRA all_attn_heads r=4, AdamW lr 1e-2, 1 step",
    metrics={"mAP@50": 0.4321, "cgF1": 0.1234},
    notes="Test export.",
)


def inputs(size: int = 112, batch: int = 2) -> dict[str, torch.Tensor]:
    return random_prompt_batch(batch, size, seed=1)


@torch.no_grad()
def outputs(
    model: nn.Module, batch: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Eval-mode outputs; in float64 a copy of the model runs, so float32 round-off cannot hide a wrong merge."""
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
        batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
    model.eval()
    out = model(**batch)
    return {key: getattr(out, key).clone() for key in OUTPUTS}


def assert_outputs_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    for key in OUTPUTS:
        diff = (a[key] - b[key]).abs().max().item()
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=f"{key}: max |diff| {diff:.3g}")


def assert_merge_exact(exported: Sam3Model, peft_model: PeftModel) -> None:
    """`exported` is the merged adapted model: equal to a merge done here, and equal to the unmerged model.

    The first check allows float round-off only (1e-6): two forward passes of the same weights may differ in the
    last bits with some kernels (newer torch releases do), so separate computations are compared with a tolerance.

    The second check runs in float64: merging in float32 rounds differently from computing W x + B A x, which
    moves `pred_masks` (|logit| up to ~15 on these tiny models) by up to ~3e-5 in float32 arithmetic, while in
    float64 the merged weights' own rounding leaves < 2e-6.
    """
    merged_here = copy.deepcopy(peft_model).merge_and_unload()
    assert_outputs_close(outputs(exported, inputs()), outputs(merged_here, inputs()), atol=1e-6)
    assert_outputs_close(outputs(exported, inputs(), torch.float64), outputs(peft_model, inputs(), torch.float64))


def max_change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in OUTPUTS)


def adapt(model: Sam3Model, preset: str, size: int = 112) -> PeftModel:
    """LoRA-wrap `model` and take one optimiser step, so that adapters and saved heads are non-trivial."""
    peft_model = prepare_for_training(model, lora=LoraSettings(preset=preset, r=4, alpha=8))
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=1e-2)
    out = peft_model(**inputs(size))
    sum(getattr(out, key).float().pow(2).mean() for key in OUTPUTS[:4]).backward()
    optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    return peft_model.eval()


@pytest.fixture(scope="module")
def tiny() -> tuple[Sam3Model, Sam3Processor]:
    return load_model("tiny")


@pytest.fixture(scope="module")
def adapted(tiny: tuple[Sam3Model, Sam3Processor]) -> tuple[Sam3Model, PeftModel, Sam3Processor]:
    """(a copy of the base model, the adapted peft model, the processor); the LoRA changes the outputs."""
    model, processor = tiny
    base = copy.deepcopy(model)
    peft_model = adapt(copy.deepcopy(model), "all_attn_heads")
    assert max_change(outputs(base, inputs()), outputs(peft_model, inputs())) > 1e-3
    return base, peft_model, processor


def test_merged_export_reloads_with_plain_transformers_and_matches(adapted, tmp_path: Path) -> None:
    base, peft_model, processor = adapted
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    expected = outputs(peft_model, inputs())

    out_dir = export_merged(peft_model, processor, tmp_path / "merged", CARD)

    assert isinstance(peft_model, PeftModel) and peft_model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in peft_model.state_dict().items()), "caller's model mutated"
    files = {p.name for p in out_dir.iterdir()}
    assert {(out_dir / f).stat().st_mode & 0o777 for f in files} == {0o666 & ~umask()}  # not owner-only
    assert {"config.json", "model.safetensors", "README.md", "processor_config.json"} <= files
    reloaded = Sam3Model.from_pretrained(out_dir)
    assert type(reloaded) is Sam3Model
    assert not any("lora" in k or "modules_to_save" in k for k in reloaded.state_dict())
    assert reloaded.state_dict().keys() == base.state_dict().keys()
    assert_outputs_close(outputs(peft_model, inputs()), expected, atol=1e-6)  # exporting left the model as it was
    assert_merge_exact(reloaded, peft_model)

    reprocessor = Sam3Processor.from_pretrained(out_dir)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8))
    a = processor(images=image, text="a red widget", return_tensors="pt")
    b = reprocessor(images=image, text="a red widget", return_tensors="pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    card = (out_dir / "README.md").read_text()
    for text in (CARD.base_model, CARD.data, CARD.recipe, "0.4321", "0.1234", "mAP@50", "Sam3Model.from_pretrained"):
        assert text in card


def test_merged_export_of_a_plain_model(tiny, tmp_path: Path) -> None:
    model, processor = tiny
    reloaded = Sam3Model.from_pretrained(export_merged(model, processor, tmp_path / "plain", CARD))
    assert_outputs_close(outputs(reloaded, inputs()), outputs(model, inputs()), atol=1e-6)


def test_adapter_export_reloads_with_peft_and_matches(adapted, tmp_path: Path) -> None:
    base, peft_model, _ = adapted
    out_dir = export_adapter(peft_model, tmp_path / "adapter", CARD)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in out_dir.iterdir()}
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), out_dir)
    assert_outputs_close(outputs(reloaded, inputs()), outputs(peft_model, inputs()), atol=1e-6)
    assert json.loads((out_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == CARD.base_model
    card = (out_dir / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card and "0.4321" in card


def tiny_video_config(width: int = 128, size: int = 112) -> Sam3VideoConfig:
    """A tiny Sam3VideoConfig: tracker as wide as the detector FPN, a multiple of 64 above 64, memory dim 64."""
    detector = _config_from_spec(dataclasses.replace(PRESET_SPECS["tiny"], width=width), size)
    tracker = dict(
        model_type="sam3_tracker_video", vision_config=detector.vision_config.to_dict(), image_size=size,
        prompt_encoder_config=dict(hidden_size=width, image_size=size, patch_size=14, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=width, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=32),
        memory_attention_hidden_size=width, memory_attention_num_layers=1, memory_attention_num_attention_heads=1,
        memory_attention_feed_forward_hidden_size=64, memory_encoder_hidden_size=width,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=width, memory_fuser_embed_dim=width,
        memory_fuser_intermediate_dim=64,
    )
    return Sam3VideoConfig(detector_config=detector.to_dict(), tracker_config=tracker)


def video_detector(config: Sam3Config) -> Sam3Model:
    torch.manual_seed(0)
    model = Sam3Model(config)
    init_for_scratch_training(model)
    return model.eval()


def test_video_export_with_a_fresh_tracker(tmp_path: Path) -> None:
    config = tiny_video_config()
    peft_model = adapt(video_detector(config.detector_config), "detr_attn")
    out_dir = export_video(peft_model, tmp_path / "video", CARD, video_config=config)

    video = Sam3VideoModel.from_pretrained(out_dir)
    assert_merge_exact(video.detector_model, peft_model)
    card = (out_dir / "README.md").read_text()
    assert "randomly initialised" in card and "Sam3VideoModel.from_pretrained" in card and CARD.recipe in card


def test_video_export_keeps_the_base_tracker(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base_video = Sam3VideoModel(tiny_video_config())
    init_for_scratch_training(base_video.detector_model)
    base_dir = tmp_path / "base_video"
    base_video.save_pretrained(base_dir)

    detector = Sam3Model.from_pretrained(base_dir)  # loads exactly the detector of a combined checkpoint
    peft_model = adapt(detector, "detr_attn")
    assert max_change(outputs(base_video.detector_model, inputs()), outputs(peft_model, inputs())) > 1e-3
    out_dir = export_video(peft_model, tmp_path / "video", CARD, base_video_dir=str(base_dir))

    video = Sam3VideoModel.from_pretrained(out_dir)
    assert_merge_exact(video.detector_model, peft_model)
    new_state, base_state = video.state_dict(), base_video.state_dict()
    assert new_state.keys() == base_state.keys()
    tracker_keys = [k for k in base_state if k.startswith(("tracker_model.", "tracker_neck."))]
    assert tracker_keys and all(torch.equal(new_state[k], base_state[k]) for k in tracker_keys)
    assert "unchanged" in (out_dir / "README.md").read_text()


def test_video_export_rejects_a_mismatched_tracker(adapted, tmp_path: Path) -> None:
    _, peft_model, _ = adapted  # fpn width 32: the default (256-wide) tracker cannot take it
    with pytest.raises(ConfigError, match="must be equal"):
        export_video(peft_model, tmp_path / "video", CARD)
    with pytest.raises(ConfigError, match="not both"):
        export_video(peft_model, tmp_path / "video", CARD, video_config=tiny_video_config(), base_video_dir="x")
    assert not (tmp_path / "video").exists()


def test_model_card_front_matter_and_sections() -> None:
    for kind, library in (("merged", "transformers"), ("adapter", "peft"), ("video", "transformers")):
        card = render_model_card(CARD, kind)
        _, front, body = card.split("---\n", 2)
        meta = yaml.safe_load(front)
        assert meta["library_name"] == library and meta["base_model"] == CARD.base_model and "sam3" in meta["tags"]
        for heading in ("## Base model", "## Data", "## Recipe", "## Metrics", "## How to load", "## Notes"):
            assert heading in body
        assert "| mAP@50 | 0.4321 |" in body and "| cgF1 | 0.1234 |" in body
        compile(body.split("```python\n")[1].split("```")[0], f"<{kind} card snippet>", "exec")
    assert "No metrics" in render_model_card(dataclasses.replace(CARD, metrics={}), "merged")
    with pytest.raises(ConfigError, match="merged, adapter, video"):
        render_model_card(CARD, "onnx")


def test_exports_replace_atomically_and_refuse_foreign_directories(tiny, adapted, tmp_path: Path) -> None:
    model, processor = tiny
    _, peft_model, _ = adapted
    target = tmp_path / "export"
    export_adapter(peft_model, target, CARD)
    export_merged(model, processor, target, CARD)  # replaces the previous export
    assert (target / "model.safetensors").exists() and not (target / "adapter_config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temp or backup directory left

    class FailingProcessor:
        def save_pretrained(self, path: str) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export_merged(peft_model, FailingProcessor(), target, CARD)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert_outputs_close(outputs(Sam3Model.from_pretrained(target), inputs()), outputs(model, inputs()), atol=1e-6)

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    (foreign / "README.md").write_text("my photos")
    with pytest.raises(ConfigError, match="not an export"):
        export_merged(model, processor, foreign, CARD)
    assert (foreign / "holiday.jpg").exists()
    with pytest.raises(ConfigError, match="peft-wrapped"):
        export_adapter(model, tmp_path / "adapter", CARD)  # type: ignore[arg-type]
