"""Per-layer outputs and the DAC (one-to-many) decoder."""

from __future__ import annotations

import torch

from sam3_model.adapters import disable_dropout
from sam3_model.dac import dac_enabled, disable_dac, enable_dac
from sam3_model.detector import run_detector


def _inputs(processor, batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    text = processor.tokenizer(["red square", "blue circle"][:batch], padding="max_length", max_length=32,
                               return_tensors="pt")
    return dict(pixel_values=torch.randn(batch, 3, 112, 112, generator=generator),
                input_ids=text.input_ids, attention_mask=text.attention_mask)


def test_final_layer_equals_model_outputs(tiny):
    model, processor = tiny
    out = run_detector(model, **_inputs(processor))
    assert len(out.o2o) == model.config.detr_decoder_config.num_layers and out.o2m == []
    torch.testing.assert_close(out.final.logits, out.raw.pred_logits)
    torch.testing.assert_close(out.final.boxes_xyxy, out.raw.pred_boxes)
    torch.testing.assert_close(out.final.presence_logits, out.raw.presence_logits)
    assert torch.equal(out.final.masks, out.raw.pred_masks)
    assert all(layer.masks is None for layer in out.o2o[:-1])
    assert not torch.allclose(out.o2o[0].boxes_cxcywh, out.o2o[1].boxes_cxcywh)


def test_hooks_are_removed_and_layers_run_once(tiny):
    model, processor = tiny
    calls = []
    handle = model.detr_decoder.layers[0].register_forward_hook(lambda *a: calls.append(1))
    run_detector(model, **_inputs(processor))
    handle.remove()
    assert len(calls) == 1
    assert not model.detr_decoder._forward_hooks and not model.dot_product_scoring._forward_hooks


def test_dac_adds_one_to_many_queries_without_changing_one_to_one(tiny):
    model, processor = tiny
    disable_dropout(model)
    inputs = _inputs(processor)
    model.train()
    plain = run_detector(model, **inputs)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    enable_dac(model)
    assert dac_enabled(model)
    dac = run_detector(model, **inputs)
    num_queries = model.config.detr_decoder_config.num_queries
    assert len(dac.o2m) == len(dac.o2o) and dac.o2m[-1].logits.shape == (2, num_queries)
    assert dac.o2m[-1].masks.shape == dac.final.masks.shape and dac.o2m[0].presence_logits is None
    for a, b in zip(plain.o2o, dac.o2o):  # o2o queries never see the o2m copy
        torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.boxes_cxcywh, b.boxes_cxcywh, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.presence_logits, b.presence_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.final.masks, dac.final.masks, atol=1e-4, rtol=0)
    # the o2m copy starts from the same queries but skips self-attention, so it differs
    assert (dac.o2m[-1].logits - dac.final.logits).abs().max() > 1e-3
    assert model.state_dict().keys() == state.keys()  # no new or renamed weights
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    model.eval()  # at eval only the o2o queries exist
    assert run_detector(model, **inputs).o2m == []
    disable_dac(model)
    assert not dac_enabled(model)


def test_dac_gradients_reach_shared_decoder_weights(tiny):
    model, processor = tiny
    enable_dac(model)
    model.train()
    out = run_detector(model, **_inputs(processor))
    out.o2m[-1].logits.sum().backward()  # o2m outputs alone
    assert model.detr_decoder.query_embed.weight.grad.abs().sum() > 0
    assert model.detr_decoder.layers[0].text_cross_attn.q_proj.weight.grad.abs().sum() > 0
