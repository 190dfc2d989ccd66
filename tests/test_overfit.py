"""The objective trains: a tiny model overfits one image-phrase pair."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import disable_dropout

from sam3_model.dac import enable_dac
from sam3_model.detector import run_detector
from sam3_model.objective import Sam3Criterion
from sam3_model.targets import ConceptTargets

SIZE = 112


def _toy_pair():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, SIZE, SIZE, generator=generator) * 0.3
    mask = torch.zeros(SIZE, SIZE)
    mask[30:80, 20:70] = 1.0
    image[0][mask.bool()] = 0.9
    box_cxcywh = torch.tensor([[45 / SIZE, 55 / SIZE, 50 / SIZE, 50 / SIZE]])
    return (image - 0.5) / 0.5, mask, ConceptTargets([box_cxcywh], [mask[None]])


def test_tiny_model_overfits_one_pair(tiny):
    torch.manual_seed(0)
    model, processor = tiny
    disable_dropout(model)
    enable_dac(model)
    model.train()
    pixels, mask, targets = _toy_pair()
    text = processor.tokenizer(["red square"], padding="max_length", max_length=32, return_tensors="pt")
    inputs = dict(pixel_values=pixels[None], input_ids=text.input_ids, attention_mask=text.attention_mask)
    criterion = Sam3Criterion()
    steps = 150
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    for _ in range(steps):
        loss, terms = criterion(run_detector(model, **inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    assert {k.split("/")[0] for k in terms} >= {"o2o", "o2m"}  # both branches trained
    assert losses[-1] <= 0.1 * losses[0], f"loss fell only from {losses[0]:.2f} to {losses[-1]:.2f}"

    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    scores = out.pred_logits.sigmoid() * out.presence_logits.sigmoid()  # (1, Q)
    best = int(scores[0].argmax())
    pred = F.interpolate(out.pred_masks[:, best : best + 1], size=(SIZE, SIZE), mode="bilinear",
                         align_corners=False)[0, 0].sigmoid() > 0.5
    iou = (pred & mask.bool()).sum() / (pred | mask.bool()).sum()
    assert iou >= 0.9, f"mask IoU {iou:.3f}"
    assert scores[0, best] > 0.5
