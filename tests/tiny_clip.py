"""Tiny random CLIP and SigLIP dual encoders (64 px), built offline and saved like Hub checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
)

from sam3_model.tokenizer import CLIP_VOCAB_SIZE, build_offline_tokenizer

_BOS, _EOS = CLIP_VOCAB_SIZE - 2, CLIP_VOCAB_SIZE - 1  # <|startoftext|>, <|endoftext|>
_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_VISION = dict(image_size=64, patch_size=16, **_TOWER)


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """A seeded tiny random `CLIPModel` + `CLIPProcessor` (offline CLIP tokenizer, context 77) in `out_dir`."""
    config = CLIPConfig(
        text_config=dict(vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=77, bos_token_id=_BOS,
                         eos_token_id=_EOS, pad_token_id=_EOS, **_TOWER),
        vision_config=_VISION,
        projection_dim=32,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
        tokenizer=build_offline_tokenizer(77),
    )
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_siglip(out_dir: str | Path, seed: int = 0) -> Path:
    """A seeded tiny random `SiglipModel` + `SiglipProcessor` in `out_dir`.

    The real SigLIP tokenizer is a SentencePiece model from the Hub; the offline CLIP tokenizer stands in (its
    ids fit the text tower's vocabulary), which is enough to test the sigmoid scoring path.
    """
    config = SiglipConfig(
        text_config=dict(vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=16, pad_token_id=_EOS, **_TOWER),
        vision_config=_VISION,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SiglipModel(config).eval()
    processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 64, "width": 64}),
                                tokenizer=build_offline_tokenizer(16))
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
