"""Run transformers' `Sam3Model` once and collect the predictions of every decoder layer.

`Sam3Model.forward` computes boxes and logits for every decoder layer but returns only the last. Forward
hooks on the decoder, its box head and the scoring head capture the per-layer tensors the model already
computed, so nothing runs twice. With DAC enabled (training mode) the 2Q queries are split into the
one-to-one and one-to-many halves.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from torch import Tensor, nn
from transformers.models.sam3.modeling_sam3 import Sam3ImageSegmentationOutput, inverse_sigmoid

from .boxes import cxcywh_to_xyxy


@dataclass
class LayerPredictions:
    """Predictions of one decoder layer for B image-phrase queries and Q object queries."""

    logits: Tensor  # (B, Q) per-query logit, without presence
    boxes_cxcywh: Tensor  # (B, Q, 4) normalised to the model's input canvas
    presence_logits: Tensor | None = None  # (B, 1); None for one-to-many queries
    masks: Tensor | None = None  # (B, Q, h, w) mask logits; final layer only

    @property
    def boxes_xyxy(self) -> Tensor:
        """(B, Q, 4) xyxy, normalised."""
        return cxcywh_to_xyxy(self.boxes_cxcywh)


@dataclass
class DetectorOutputs:
    """Every decoder layer's predictions (last entry = final layer) and the model's own output."""

    o2o: list[LayerPredictions]
    o2m: list[LayerPredictions] = field(default_factory=list)  # empty unless DAC runs
    raw: Sam3ImageSegmentationOutput | None = None

    @property
    def final(self) -> LayerPredictions:
        """The final decoder layer's one-to-one predictions."""
        return self.o2o[-1]


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def _capture(model: nn.Module) -> Iterator[dict[str, object]]:
    """Record the decoder output, the last box-head call (all layers at once) and the scoring output."""
    base = _base_model(model)
    captured: dict[str, object] = {}

    def keep(name: str):
        def hook(_module, _inputs, output):
            captured[name] = output
        return hook

    handles = [
        base.detr_decoder.register_forward_hook(keep("decoder")),
        base.detr_decoder.box_head.register_forward_hook(keep("box_offsets")),
        base.dot_product_scoring.register_forward_hook(keep("scores")),
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def run_detector(model: nn.Module, **inputs: Tensor) -> DetectorOutputs:
    """Call the model once on `inputs` (as for `Sam3Model.forward`) and return per-layer predictions."""
    with _capture(model) as captured:
        raw = model(**inputs)
    decoder = captured["decoder"]
    offsets = captured["box_offsets"]  # (L, B, Q', 4): the model's last box-head call covers all layers
    if offsets.dim() != 4:
        raise RuntimeError("the box head was not called on all decoder layers at once; transformers changed?")
    boxes = (inverse_sigmoid(decoder.reference_boxes) + offsets).sigmoid()  # (L, B, Q', 4) cxcywh
    logits = captured["scores"].squeeze(-1)  # (L, B, Q')
    presence = decoder.presence_logits  # (L, B, 1)
    masks = raw.pred_masks  # (B, Q', h, w)
    num_o2o = _base_model(model).detr_decoder.query_embed.weight.shape[0]
    num_layers = logits.shape[0]

    def layer(l: int, part: slice, with_presence: bool) -> LayerPredictions:
        final = l == num_layers - 1
        return LayerPredictions(
            logits=logits[l][:, part],
            boxes_cxcywh=boxes[l][:, part],
            presence_logits=presence[l] if with_presence else None,
            masks=masks[:, part] if final else None,
        )

    o2o = [layer(l, slice(0, num_o2o), True) for l in range(num_layers)]
    has_o2m = logits.shape[-1] > num_o2o
    o2m = [layer(l, slice(num_o2o, None), False) for l in range(num_layers)] if has_o2m else []
    return DetectorOutputs(o2o=o2o, o2m=o2m, raw=raw)
