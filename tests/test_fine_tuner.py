"""Sam3FineTuner on its own: training modes, and phrase chunks that change memory but not the loss or gradients."""

from __future__ import annotations

import pytest
import torch

from adapt.data.batch import PhraseItem, PhraseCollator, SampleMeta
from adapt.training.module import Sam3FineTuner, TrainableConfig
from sam3_model.adapters import COMPONENTS, component_of, disable_dropout
from sam3_model.errors import ConfigError
from sam3_model.loading import build_processor


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i, phrases in enumerate((["red square", "blue disc", "cat"], ["blue disc", "dog"])):
        boxes = [torch.tensor([[0.3, 0.3, 0.2, 0.2]]) if k % 2 == 0 else torch.zeros(0, 4) for k in range(len(phrases))]
        masks = [torch.zeros(len(b), 112, 112, dtype=torch.bool) for b in boxes]
        for m in masks:
            m[:, 22:45, 22:45] = True
        items.append(PhraseItem(torch.randn(3, 112, 112, generator=gen), phrases, boxes, masks,
                                SampleMeta(i, "d", 112, 112, i, 0, 0, 112, 112)))
    return PhraseCollator(build_processor(112).tokenizer)(items)


def _grads(module: Sam3FineTuner, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad()
    loss, _ = module.batch_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_phrase_chunks_give_the_same_loss_and_gradients():
    batch = _batch()
    module = Sam3FineTuner("tiny", trainable=TrainableConfig(mode="full"), phrase_chunk_size=100)
    disable_dropout(module.model)
    whole_loss, whole = _grads(module, batch)
    module.phrase_chunk_size = 2  # 5 queries -> 3 chunks, each checkpointed
    chunk_loss, chunked = _grads(module, batch)
    torch.testing.assert_close(chunk_loss, whole_loss, rtol=1e-5, atol=1e-5)
    assert whole.keys() == chunked.keys() and len(whole) > 100
    # equal up to float summation order: within 1e-5 of each tensor's scale, or of the gradients' overall scale
    # for tensors whose true gradient is ~0 (e.g. attention key biases)
    overall = max(g.abs().max().item() for g in whole.values())
    for name in whole:
        scale = max(whole[name].abs().max().item(), 1e-3 * overall)
        assert (chunked[name] - whole[name]).abs().max().item() <= 1e-5 * scale, name


def test_modes_choose_what_trains():
    heads = Sam3FineTuner("tiny", trainable=TrainableConfig(mode="heads"))
    trainable = {component_of(n.removeprefix("model.") + ".") for n, p in heads.named_parameters() if p.requires_grad}
    assert trainable == {"heads"}
    full = Sam3FineTuner("tiny", trainable=TrainableConfig(mode="full", frozen=["text", "vision"]))
    trainable = {component_of(n.removeprefix("model.") + ".") for n, p in full.named_parameters() if p.requires_grad}
    assert trainable == set(COMPONENTS) - {"text", "vision"}
    lora = Sam3FineTuner("tiny")
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    with pytest.raises(ConfigError, match="mode"):
        Sam3FineTuner("tiny", trainable=TrainableConfig(mode="everything"))
