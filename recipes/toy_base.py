"""Train the demo's base model: a `small` SAM 3 that knows the toy domain's general concepts, from scratch.

The demo recipe starts from this model the way a real recipe starts from `facebook/sam3`: it was trained on
general concepts (shapes, and colour + shape) and has never been asked about the fine domain concepts (patterns:
"striped circle"), although striped and dotted objects are in its training images, labelled by their parents.
Run once; the result ships in `recipes/demo_base/`:

    python -m recipes.toy_base --out recipes/demo_base      # the shipped weights: 9,000 steps, ~30 min on 1 core

Token-embedding rows of words outside the toy grammar are zeroed before saving (the model never reads them), so
the saved weights compress to a few hundred kB in git and in the wheel while staying a plain `save_pretrained`
directory that `Sam3Model.from_pretrained` loads.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from sam3_model.atomic import atomic_write_text

# General concepts: three shape nouns (the domain concepts' parents) and colour + shape for three colours.
GENERAL_SHAPES = ("circle", "square", "triangle")
GENERAL_COLOURS = ("red", "blue", "yellow")


def general_ontology() -> dict[str, Any]:
    """The base model's training phrases as an ontology mapping (every phrase a concept)."""
    phrases = [*GENERAL_SHAPES, *(f"{c} {s}" for c in GENERAL_COLOURS for s in GENERAL_SHAPES)]
    return {"concepts": [{"name": p} for p in phrases]}


def toy_images(out: Path, ontology: dict[str, Any], num_images: int, seed: int, **toy: Any) -> Path:
    """Render `num_images` toy images with exact labels for `ontology` into `out`; returns exact.json."""
    from synth.config import synth_config_from_mapping
    from synth.engine import SynthRun

    data = {"ontology": ontology, "labels": "exact",
            "source": {"toy": {"num_images": num_images, "seed": seed, **toy}},
            "run": {"shard_size": 256, "progress": False, "accelerator": "cpu"}}
    config = synth_config_from_mapping(data, "toy data:", out)
    return SynthRun(config, out).run()["exact"]


def toy_vocabulary_ids(tokenizer: Any) -> list[int]:
    """Token ids of every word of the toy grammar (and the special tokens): the rows the model may read."""
    from synth.sources.toy import ANY_SHAPE, COLOURS, PATTERNS, SHAPES

    words = [*SHAPES, ANY_SHAPE, *COLOURS, *PATTERNS]
    ids = set(tokenizer.all_special_ids)
    for word in words:
        ids.update(tokenizer(word)["input_ids"])
    return sorted(ids)


@torch.no_grad()
def zero_unused_token_rows(model: torch.nn.Module, keep_ids: list[int]) -> int:
    """Zero the token-embedding rows outside `keep_ids`; returns how many rows were zeroed."""
    weight = model.text_encoder.text_model.embeddings.token_embedding.weight  # (V, D)
    keep = torch.zeros(weight.shape[0], dtype=torch.bool)
    keep[keep_ids] = True
    weight[~keep] = 0
    return int((~keep).sum())


@dataclass
class BaseTraining:
    """How the toy base model is trained (the values that shipped are recorded in training.json)."""

    preset: str = "small"
    train_images: int = 5000
    test_images: int = 300
    steps: int = 9000
    minutes: float = 62.0  # wall-clock cap (the machine's speed varies); the cosine schedule assumes `steps`
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 200
    max_negatives: int = 2  # absent phrases asked per image draw
    size: int = 84
    min_object: float = 0.2
    max_object: float = 0.4
    objects: tuple[int, int] = (1, 3)
    seed: int = 0
    threads: int = 1


def fine_tuner(model: str, cfg_lr: float, warmup: int, seed: int, mode: str = "full", chunk: int = 256) -> Any:
    """A `Sam3FineTuner` that trains every parameter at one learning rate with a cosine schedule."""
    from adapt.training.module import Sam3FineTuner, TrainableConfig
    from adapt.training.optim import OptimizerConfig
    from adapt.training.schedules import ScheduleConfig

    return Sam3FineTuner(model=model, trainable=TrainableConfig(mode=mode, frozen=[]),
                         optimizer=OptimizerConfig(lr=cfg_lr, vision_lr=cfg_lr, text_lr=cfg_lr, layer_decay=1.0,
                                                   weight_decay=0.05),
                         schedule=ScheduleConfig(name="cosine", warmup_steps=warmup), seed=seed,
                         phrase_chunk_size=chunk)  # one detector pass per batch: chunking recomputes activations


def train_base(out: str | Path, cfg: BaseTraining, work: str | Path | None = None) -> dict[str, float]:
    """Render general toy data, train `cfg.preset` from scratch, evaluate, save to `out`; returns the metrics."""
    from adapt.data.datamodule import DatasetSpec, Sam3DataModule
    from adapt.data.transforms import AugmentConfig
    from adapt.training.trainer import build_trainer

    torch.set_num_threads(cfg.threads)
    out = Path(out)
    work = Path(work) if work else out.parent / f"{out.name}-work"
    toy = {"size": cfg.size, "min_object": cfg.min_object, "max_object": cfg.max_object,
           "objects": list(cfg.objects), "concept_focus": 0.5}
    ontology = general_ontology()
    train_json = toy_images(work / "train", ontology, cfg.train_images, cfg.seed, **toy)
    test_json = toy_images(work / "test", ontology, cfg.test_images, cfg.seed + 1000, **toy)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = fine_tuner(cfg.preset, cfg.lr, cfg.warmup_steps, cfg.seed)
    data = Sam3DataModule(train=[DatasetSpec(str(train_json), max_negatives=cfg.max_negatives)],
                          val=[DatasetSpec(str(test_json))], batch_size=cfg.batch_size, num_workers=1,
                          augment=AugmentConfig(scale_jitter=False), seed=cfg.seed)
    trainer = build_trainer(default_root_dir=str(work), accelerator="cpu", max_steps=cfg.steps,
                            max_time={"minutes": cfg.minutes}, gradient_clip_val=None,  # the base was trained unclipped
                            precision="32-true", logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                            limit_val_batches=0, quiet=True, log_every_n_steps=50)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    steps = trainer.global_step
    evaluator = build_trainer(default_root_dir=str(work), accelerator="cpu", precision="32-true", logger=False,
                              quiet=True, enable_progress_bar=False)
    metrics = {k: float(v) for k, v in evaluator.validate(module, datamodule=data, verbose=False)[0].items()}

    model = module.model.eval()
    zeroed = zero_unused_token_rows(model, toy_vocabulary_ids(module.processor.tokenizer))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    module.processor.save_pretrained(out)
    report = {"training": asdict(cfg), "steps_done": steps, "train_seconds": round(seconds, 1),
              "zeroed_token_rows": zeroed, "general_ontology": ontology,
              "test_metrics": {k: round(v, 4) for k, v in metrics.items()}}
    atomic_write_text(out / "training.json", json.dumps(report, indent=2) + "\n")
    return metrics


def script_arguments(description: str, settings: type, work_help: str,
                     argv: list[str] | None) -> tuple[str, str | None, Any]:  # fmt: skip
    """A training script's command line: `--out DIR`, `--work DIR` and one `--<field>` per number or string
    field of the `settings` dataclass; returns (out, work, settings filled in)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default=None, help=work_help)
    for name, value in asdict(settings()).items():
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    out, work = args.pop("out"), args.pop("work")
    return out, work, settings(**args)


def main(argv: list[str] | None = None) -> None:
    """`python -m recipes.toy_base --out DIR [--minutes M] [--steps N]`."""
    out, work, cfg = script_arguments(__doc__.splitlines()[0], BaseTraining,
                                      "where the general toy data goes (default: OUT-work)", argv)
    metrics = train_base(out, cfg, work)
    print(json.dumps({k: round(v, 4) for k, v in metrics.items() if "/" in k}, indent=2))


if __name__ == "__main__":
    main()
