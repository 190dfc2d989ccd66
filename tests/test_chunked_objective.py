"""Phrase chunks: the objective of a batch split into chunks sums to the objective of the whole batch."""

from __future__ import annotations

import torch

from sam3_model.adapters import disable_dropout
from sam3_model.dac import enable_dac
from sam3_model.detector import run_detector
from sam3_model.objective import Sam3Criterion, global_num_boxes
from sam3_model.targets import ConceptTargets


def test_chunk_losses_sum_to_the_batch_loss(tiny):
    model, processor = tiny
    disable_dropout(model)
    enable_dac(model)
    model.train()
    gen = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, 112, 112, generator=gen)
    phrases = ["red square", "blue disc", "green bar", "cat", "dog"]
    tokens = processor.tokenizer(phrases, padding="max_length", max_length=32, return_tensors="pt")
    boxes = [torch.tensor([[0.3, 0.3, 0.2, 0.2]]), torch.zeros(0, 4),
             torch.tensor([[0.6, 0.5, 0.3, 0.1], [0.2, 0.7, 0.1, 0.2]]), torch.zeros(0, 4),
             torch.tensor([[0.5, 0.5, 0.4, 0.4]])]
    masks = [torch.zeros(len(b), 112, 112, dtype=torch.bool) for b in boxes]
    for m, b in zip(masks, boxes):
        for t, (cx, cy, w, h) in enumerate(b.tolist()):
            m[t, int((cy - h / 2) * 112) : int((cy + h / 2) * 112), int((cx - w / 2) * 112) : int((cx + w / 2) * 112)] = True
    targets = ConceptTargets(boxes, masks)
    criterion = Sam3Criterion()
    with torch.no_grad():
        vision = model.get_vision_features(pixel_values=pixel_values)

        def detect(start: int, stop: int):
            n = stop - start
            from sam3_model.predict import _expand_vision

            return run_detector(model, vision_embeds=_expand_vision(vision, n),
                                input_ids=tokens["input_ids"][start:stop],
                                attention_mask=tokens["attention_mask"][start:stop])

        whole, whole_terms = criterion(detect(0, 5), targets)
        num_boxes = global_num_boxes(targets, pixel_values.device)
        chunked = torch.zeros(())
        for start, stop in ((0, 2), (2, 4), (4, 5)):
            part = ConceptTargets(boxes[start:stop], masks[start:stop])
            loss, _ = criterion(detect(start, stop), part, num_boxes=num_boxes, total_queries=5)
            chunked = chunked + loss
        naive = sum(criterion(detect(s, e), ConceptTargets(boxes[s:e], masks[s:e]))[0] for s, e in ((0, 2), (2, 4), (4, 5)))
    assert torch.allclose(chunked, whole, rtol=1e-5), (chunked, whole)
    assert not torch.allclose(naive, whole, rtol=1e-3)  # chunks normalised on their own would change the loss
