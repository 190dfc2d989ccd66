"""Calibrate a recipe's verifiers before they judge the pool: each verifier's accept threshold is set to the lowest
that reaches the target precision against human-verified labels.

The labels are a human sample in `synth calibrate`'s format (`calibration.human`), or built from the recipe's own
human-verified training split: the teacher labels the first `calibration.hq_images` images of hq.train (which a
trained crop-classifier verifier then never trains on, so it is not calibrated on its own training data); a
teacher instance is an accept when it matches a human mask of its phrase (mask IoU >= 0.5), else a reject (mask
verification), and an image-phrase pair is an accept when every human instance of it is matched (exhaustivity).
The sample is
written to `calibration/sample.json` (the same format, for inspection or reuse), the report beside it, and the
thresholds to `calibration/thresholds.json`, which a rerun reuses.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from adapt.data.readers import read_dataset
from adapt.training.trainer import on_gpu
from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError
from sam3_model.images import load_image
from synth.engine import teacher_labeller
from synth.ontology import Ontology
from verifiers.calibration import (HumanSample, evaluate_verifiers, read_human_sample,
                                   write_calibration_report)
from verifiers.configs import VerifyConfig
from verifiers.geometric import mask_iou

from .config import RecipeConfig

MATCH_IOU = 0.5  # a teacher instance is the human's instance at this mask IoU


def calibrated(recipe: RecipeConfig, verify: VerifyConfig, hq_train: Any, ontology: Ontology,
               out: Path) -> tuple[VerifyConfig, str]:
    """`verify` with calibrated thresholds (as written when the recipe asks for no calibration), and a note."""
    settings = recipe.calibration
    if settings is None:
        return verify, ""
    saved = out / "thresholds.json"
    inputs = json.loads(json.dumps({"calibration": dataclasses.asdict(settings), "verify": dataclasses.asdict(verify),
                                    "teacher": dataclasses.asdict(recipe.teacher_config())}))
    previous = json.loads(saved.read_text()) if saved.is_file() else {}
    if previous.get("inputs") == inputs:  # a rerun: the same sample, verifiers and teacher
        thresholds = previous["thresholds"]
    else:
        sample_path = Path(settings.human) if settings.human else build_sample(recipe, hq_train, ontology, out)
        thresholds = calibrate_thresholds(verify, read_human_sample(sample_path), settings.target_precision, out)
        atomic_write_text(saved, json.dumps({"thresholds": thresholds, "inputs": inputs}, indent=2) + "\n")
    source = settings.human or f"{settings.hq_images} hq.train images"
    return with_thresholds(verify, thresholds), _note(thresholds, source, settings.target_precision)


def calibrate_thresholds(verify: VerifyConfig, sample: HumanSample, target_precision: float,
                         out: Path) -> dict[str, float]:
    """{verify field: threshold} for every configured verifier with a threshold the sample could calibrate."""
    fields, mask, exhaustivity = {}, [], []
    for name, config in verify.configured():
        if not hasattr(config, "threshold"):  # nothing to calibrate: not built (it may load a model)
            continue
        verifier = config.build()
        fields[verifier.name] = name
        mask += [verifier] if "mask" in config.roles else []
        exhaustivity += [verifier] if "exhaustivity" in config.roles else []
    if not fields:
        return {}
    results = evaluate_verifiers(sample, mask, exhaustivity, target_precision)
    write_calibration_report(results, out)
    thresholds = {}
    for key, result in results.items():
        name = fields.get(key.split(":", 1)[1])
        if name is not None and result.threshold is not None:
            thresholds[name] = max(thresholds.get(name, 0.0), float(result.threshold))
    return thresholds


def with_thresholds(verify: VerifyConfig, thresholds: dict[str, float]) -> VerifyConfig:
    """`verify` with each named verifier's threshold replaced."""
    changes = {name: dataclasses.replace(getattr(verify, name), threshold=value)
               for name, value in thresholds.items() if getattr(verify, name, None) is not None}
    return dataclasses.replace(verify, **changes)


def build_sample(recipe: RecipeConfig, hq_train: Any, ontology: Ontology, out: Path) -> Path:
    """The teacher's labels of the first `hq_images` hq.train images, judged against the human labels."""
    result = read_dataset(hq_train.path, format=hq_train.format, image_root=hq_train.images)
    samples = [s for s in result.samples[: recipe.calibration.hq_images] if s.phrases]  # the crop classifier
    #                                                                   trains on the images after these
    if not samples:
        raise ConfigError(f"calibration: {hq_train.path} has no labelled image to build a calibration sample from")
    accelerator = recipe.synth.accelerator
    labeller = teacher_labeller(recipe.teacher_config(), ontology, accelerator, "cuda" if on_gpu(accelerator) else None)
    mask_entries, pair_entries = [], []
    for sample in samples:
        image = load_image(sample.image_path, str(sample.image_path))
        human = {p.phrase: p for p in sample.phrases}
        for label in labeller.label(image):
            truth = human.get(label.phrase)
            if truth is None or not truth.exhaustive:
                continue  # only pairs the human labels answer completely
            masks = list(truth.masks or [])
            found = [inst for inst, _ in label.instances]
            negatives = ontology.confusable_with(label.phrase)
            ious = mask_iou([i.mask for i in found], masks) if found and masks else None  # (D, G)
            for k, inst in enumerate(found):
                hit = ious is not None and ious[k].max() >= MATCH_IOU
                mask_entries.append({**_instance(inst), "file_name": str(sample.image_path), "phrase": label.phrase,
                                     "negatives": negatives, "label": "accept" if hit else "reject"})
            complete = not masks or (ious is not None and bool((ious.max(0) >= MATCH_IOU).all()))
            pair_entries.append({"file_name": str(sample.image_path), "phrase": label.phrase,
                                 "instances": [_instance(i) for i in found],
                                 "candidates": [_instance(i) for i, _ in label.candidates],
                                 "presence": round(min(1.0, max(0.0, float(label.presence))), 6),
                                 "negatives": negatives, "label": "accept" if complete else "reject"})
    path = out / "sample.json"
    atomic_write_text(path, json.dumps({"mask": mask_entries, "exhaustivity": pair_entries}) + "\n")
    return path


def _instance(inst: Any) -> dict[str, Any]:
    return {"mask": inst.mask, "box_xyxy_px": [float(v) for v in inst.box_xyxy_px], "score": float(inst.score)}


def _note(thresholds: dict[str, float], source: str, target: float) -> str:
    if not thresholds:
        return f"calibration on {source}: no verifier threshold reached precision {target:g}; thresholds as written"
    chosen = ", ".join(f"{name} {value:.3f}" for name, value in thresholds.items())
    return f"verifier thresholds calibrated on {source} (accept precision >= {target:g}): {chosen}"
