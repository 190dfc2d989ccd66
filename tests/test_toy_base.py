"""The script that trains the demo's base model: a few steps of it, and what it saves."""

from __future__ import annotations

import json

import torch
from transformers import Sam3Model

from recipes.toy_base import BaseTraining, general_ontology, toy_vocabulary_ids, train_base
from sam3_model.loading import load_model


def test_train_base_saves_a_plain_checkpoint_reading_only_the_toy_vocabulary(tmp_path):
    cfg = BaseTraining(preset="tiny", train_images=8, test_images=4, steps=2, minutes=2, batch_size=2,
                       warmup_steps=1, size=84, threads=1)
    metrics = train_base(tmp_path / "base", cfg, tmp_path / "work")
    assert "val/cgF1" in metrics
    model = Sam3Model.from_pretrained(tmp_path / "base")
    report = json.loads((tmp_path / "base" / "training.json").read_text())
    assert report["steps_done"] == 2 and report["general_ontology"] == general_ontology()
    _, processor = load_model(str(tmp_path / "base"))
    keep = toy_vocabulary_ids(processor.tokenizer)
    rows = model.text_encoder.text_model.embeddings.token_embedding.weight  # (V, D)
    nonzero = torch.nonzero(rows.abs().sum(dim=1)).flatten().tolist()
    assert set(nonzero) <= set(keep) and len(nonzero) > 10
    assert report["zeroed_token_rows"] == rows.shape[0] - len(keep)
    assert processor.tokenizer("green circle")["input_ids"][1] in keep
