"""One-to-many (DAC-DETR) queries for transformers' SAM 3 decoder, reusing its pretrained weights.

The official SAM 3 decoder trains with 2xQ queries: the Q learned queries (one-to-one, "o2o") and a copy of
them (one-to-many, "o2m") that share every weight. In each layer the o2m copy skips self-attention (no
residual update; the post-self-attention LayerNorm still applies to it); text and image cross-attention and
the FFN run on all tokens. Because self-attention of the presence token and the o2o queries never sees the
o2m copy, the o2o outputs equal those of the plain decoder. At eval only the o2o queries exist.

`enable_dac(model)` switches the decoder's class in place; no parameter is added, renamed or copied, so
`save_pretrained` and the state dict are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.sam3.modeling_sam3 import (
    Sam3DETRDecoderOutput,
    Sam3DetrDecoder,
    Sam3DetrDecoderLayer,
    inverse_sigmoid,
)


def _dac_layer_forward(
    layer: Sam3DetrDecoderLayer,
    hidden_states: Tensor,  # (B, 1 + 2Q, D): presence token, o2o queries, o2m queries
    query_pos: Tensor,  # (B, 2Q, D)
    num_o2o: int,
    text_features: Tensor,  # (B, T, D)
    vision_features: Tensor,  # (B, HW, D)
    vision_pos_encoding: Tensor,  # (B, HW, D)
    text_cross_attn_mask: Tensor | None,
    vision_cross_attn_mask: Tensor | None,  # (B, heads, 1 + 2Q, HW) box relative position bias
) -> Tensor:
    """One decoder layer where only [presence; o2o] take part in self-attention."""
    query_pos = F.pad(query_pos, (0, 0, 1, 0), value=0.0)  # no positional embedding on the presence token
    split = 1 + num_o2o

    own, copy = hidden_states[:, :split], hidden_states[:, split:]
    own_with_pos = own + query_pos[:, :split]
    attn_output, _ = layer.self_attn(query=own_with_pos, key=own_with_pos, value=own, attention_mask=None)
    own = own + layer.self_attn_dropout(attn_output)
    hidden_states = layer.self_attn_layer_norm(torch.cat([own, copy], dim=1))

    residual = hidden_states
    attn_output, _ = layer.text_cross_attn(
        query=hidden_states + query_pos, key=text_features, value=text_features, attention_mask=text_cross_attn_mask
    )
    hidden_states = layer.text_cross_attn_layer_norm(residual + layer.text_cross_attn_dropout(attn_output))

    residual = hidden_states
    attn_output, _ = layer.vision_cross_attn(
        query=hidden_states + query_pos,
        key=vision_features + vision_pos_encoding,
        value=vision_features,
        attention_mask=vision_cross_attn_mask,
    )
    hidden_states = layer.vision_cross_attn_layer_norm(residual + layer.vision_cross_attn_dropout(attn_output))

    residual = hidden_states
    hidden_states = layer.mlp_layer_norm(residual + layer.mlp_dropout(layer.mlp(hidden_states)))
    return hidden_states


class DacDetrDecoder(Sam3DetrDecoder):
    """`Sam3DetrDecoder` that, in training mode, runs Q extra one-to-many queries after the Q o2o ones."""

    def forward(  # type: ignore[override]
        self,
        vision_features: Tensor,
        text_features: Tensor,
        vision_pos_encoding: Tensor,
        text_mask: Tensor | None = None,
        spatial_shapes: Tensor | None = None,
        **kwargs,
    ) -> Sam3DETRDecoderOutput:
        """Decoder outputs over 2Q queries in training (o2o first), the plain decoder's in eval."""
        if not self.training:
            return super().forward(vision_features, text_features, vision_pos_encoding, text_mask=text_mask,
                                   spatial_shapes=spatial_shapes, **kwargs)
        batch_size = vision_features.shape[0]
        num_o2o = self.query_embed.weight.shape[0]
        query_embeds = self.query_embed.weight.repeat(2, 1).unsqueeze(0).expand(batch_size, -1, -1)  # (B, 2Q, D)
        reference_boxes = self.reference_points.weight.repeat(2, 1).unsqueeze(0).expand(batch_size, -1, -1).sigmoid()
        presence_token = self.presence_token.weight.unsqueeze(0).expand(batch_size, -1, -1)  # (B, 1, D)
        hidden_states = torch.cat([presence_token, query_embeds], dim=1)  # (B, 1 + 2Q, D)

        text_cross_attn_mask = None
        if text_mask is not None:
            text_cross_attn_mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden_states, attention_mask=text_mask,
                encoder_hidden_states=text_features,
            )

        layer_states, layer_boxes, layer_presence = [], [reference_boxes], []
        for layer in self.layers:
            query_pos = self.ref_point_head(self.position_encoding.encode_boxes(reference_boxes))  # (B, 2Q, D)
            vision_cross_attn_mask = None
            if spatial_shapes is not None and spatial_shapes.shape[0] == 1:
                rpb = self._get_rpb_matrix(reference_boxes, (spatial_shapes[0, 0], spatial_shapes[0, 1]))
                vision_cross_attn_mask = F.pad(rpb, (0, 0, 1, 0), value=0.0)  # presence row: no bias
            hidden_states = _dac_layer_forward(
                layer, hidden_states, query_pos, num_o2o, text_features, vision_features, vision_pos_encoding,
                text_cross_attn_mask, vision_cross_attn_mask,
            )
            queries = self.output_layer_norm(hidden_states[:, 1:])  # (B, 2Q, D)
            new_boxes = (self.box_head(queries) + inverse_sigmoid(reference_boxes)).sigmoid()
            reference_boxes = new_boxes.detach()
            layer_states.append(queries)
            layer_boxes.append(new_boxes)
            presence = self.presence_head(self.presence_layer_norm(hidden_states[:, :1])).squeeze(-1)
            layer_presence.append(presence.clamp(-self.clamp_presence_logit_max_val, self.clamp_presence_logit_max_val))

        return Sam3DETRDecoderOutput(
            intermediate_hidden_states=torch.stack(layer_states),  # (L, B, 2Q, D)
            reference_boxes=torch.stack(layer_boxes[:-1]),  # (L, B, 2Q, 4) input boxes of each layer, cxcywh
            presence_logits=torch.stack(layer_presence),  # (L, B, 1)
        )


def _decoder_of(model: torch.nn.Module) -> Sam3DetrDecoder:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.detr_decoder


def enable_dac(model: torch.nn.Module) -> None:
    """Give the model's decoder one-to-many queries in training mode (in place; weights untouched)."""
    decoder = _decoder_of(model)
    if type(decoder) is Sam3DetrDecoder:
        decoder.__class__ = DacDetrDecoder


def disable_dac(model: torch.nn.Module) -> None:
    """Restore the plain transformers decoder class."""
    decoder = _decoder_of(model)
    if type(decoder) is DacDetrDecoder:
        decoder.__class__ = Sam3DetrDecoder


def dac_enabled(model: torch.nn.Module) -> bool:
    """Whether the model's decoder runs one-to-many queries in training mode."""
    return isinstance(_decoder_of(model), DacDetrDecoder)
