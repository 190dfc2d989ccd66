"""Build the final datasets from the verified shards: PL, SYN (and EXACT when the source has exact labels).

- `pl.json`: the teacher's pseudo-labels as they are: every pair, every instance above the threshold; a pair
  with none is an (unverified) negative. The paper's PL-Food.
- `syn.json`: instances every mask verifier accepted; pairs every exhaustivity verifier accepted (a pair with
  no accepted instance is then a verified negative); an EV-rejected pair is dropped, or kept with
  `is_instance_exhaustive: false` when `non_exhaustive: keep_flagged`. Hard negatives follow the paper's
  adversarial rule (`hard_negatives: adversarial`): a negative pair whose phrase is confusable with a concept
  accepted in the same image (a sibling or a listed hard negative) is kept only when the teacher's detections
  for it overlap that concept's accepted masks, i.e. when it is a negative the model gets wrong. The paper's
  SA-Co/SYN-Food.
- `exact.json`: the source's exact labels (toy renderer, copy-paste), the stand-in for human-verified (HQ) data.

All are SA-Co JSON (one `images[]` entry per image-phrase pair, boxes xywh normalised, RLE masks) that
`adapt/` reads. Every annotation carries `provenance` (source, teacher prompt and score, each verifier's verdict)
and every pair a `decision` (status, by whom, why). `decisions.jsonl` lists every pair, dropped ones included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam3_model.atomic import atomic_write_text
from sam3_model.formats import saco_annotation, saco_json, write_json_dataset
from sam3_model.records import mask_area
from verifiers.geometric import mask_iou

from .ontology import Ontology
from .shards import RunDir
from .stages import exact_pairs

VARIANTS = ("pl", "syn", "exact")


@dataclass
class MergeSettings:
    """What the datasets record about the run."""

    teacher: str  # the teacher checkpoint (or "exact" when the labels came from the source)
    non_exhaustive: str = "drop"
    hard_negatives: str = "adversarial"  # or "all": every verified negative pair stays
    adversarial_iou: float = 0.5


class _SacoBuilder:
    """Accumulates SA-Co pairs and annotations with sequential ids."""

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add_pair(self, record: dict[str, Any], phrase: str, exhaustive: bool, decision: dict[str, Any],
                 instances: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:  # fmt: skip
        """One image-phrase pair and its instances: (instance JSON, provenance)."""
        pair_id = len(self.images) + 1
        w, h = record["width"], record["height"]
        self.images.append({"id": pair_id, "file_name": record["file_name"], "height": h, "width": w,
                            "text_input": phrase, "is_instance_exhaustive": exhaustive, "decision": decision})
        for inst, provenance in instances:
            x0, y0, x1, y1 = inst["box_xyxy_px"]
            self.annotations.append(saco_annotation(
                len(self.annotations) + 1, pair_id, [x0, y0, x1 - x0, y1 - y0], w, h, mask_area(inst["mask"]),
                inst["mask"], score=inst["score"], provenance=provenance))

    def to_json(self, info: dict[str, Any]) -> dict[str, Any]:
        return saco_json(self.images, self.annotations, {**info, "variant": self.variant})


def _provenance(record: dict[str, Any], pair: dict[str, Any], inst: dict[str, Any], teacher: str,
                verdicts: list[dict[str, Any]] | None) -> dict[str, Any]:  # fmt: skip
    teacher_part = ({"checkpoint": teacher, "score": inst["score"], "prompt": inst["prompted_with"],
                     "presence": pair["presence"]} if inst["prompted_with"] != "exact" else None)
    return {"source": record["source"], "image_key": record["key"], "teacher": teacher_part,
            "verifiers": verdicts if verdicts is not None else []}


def merge_run(records: list[dict[str, Any]], run_dir: RunDir, ontology: Ontology, settings: MergeSettings,
              info: dict[str, Any]) -> dict[str, Path]:  # fmt: skip
    """Write pl.json, syn.json (and exact.json) and decisions.jsonl into `run_dir` from every verify record."""
    builders = {v: _SacoBuilder(v) for v in VARIANTS}
    decisions: list[str] = []
    for record in records:
        if "skipped" in record:
            continue
        easy = easy_negatives(record, ontology, settings)
        for pair in record["pairs"]:
            decisions.append(json.dumps(_add_pair(builders, record, pair, settings, easy.get(pair["phrase"]))))
        if record.get("exact_phrases"):
            for pair in exact_pairs(record, ontology):
                status = "positive" if pair["instances"] else "negative"
                builders["exact"].add_pair(record, pair["phrase"], True,
                                           {"status": status, "by": "source", "reason": "exact by construction"},
                                           [(i, _provenance(record, pair, i, settings.teacher, None))
                                            for i in pair["instances"]])
    written = {}
    for variant, builder in builders.items():
        if variant == "exact" and not builder.images:
            continue
        path = run_dir.root / f"{variant}.json"
        write_json_dataset(path, builder.to_json(info))
        written[variant] = path
    written["decisions"] = atomic_write_text(run_dir.root / "decisions.jsonl", "".join(d + "\n" for d in decisions))
    return written


def _kept(pair: dict[str, Any]) -> list[dict[str, Any]]:
    """The pair's instances every mask verifier accepted."""
    verdicts = pair.get("verification", {}).get("instances") or [{"rejected_by": None}] * len(pair["instances"])
    return [inst for inst, v in zip(pair["instances"], verdicts) if v["rejected_by"] is None]


def easy_negatives(record: dict[str, Any], ontology: Ontology, settings: MergeSettings) -> dict[str, str]:
    """{phrase: why} for the image's negative pairs the adversarial rule leaves out of SYN: the phrase is
    confusable with a concept accepted in the image, and none of the teacher's detections for it (instances or
    candidates) overlaps that concept's accepted masks."""
    if settings.hard_negatives != "adversarial":
        return {}
    accepted = {p["phrase"]: [i["mask"] for i in _kept(p)] for p in record["pairs"]}
    easy = {}
    for pair in record["pairs"]:
        phrase = pair["phrase"]
        if accepted.get(phrase):
            continue  # a positive pair, not a negative
        present = [c for c in ontology.names if accepted.get(c) and phrase in ontology.negatives_of(c)]
        if not present:
            continue  # an ordinary negative: nothing confusable with it is in the image
        detections = [i["mask"] for i in [*pair["instances"], *pair.get("candidates", [])]]
        positives = [m for c in present for m in accepted[c]]
        if not detections or mask_iou(detections, positives).max() < settings.adversarial_iou:  # (D, P)
            easy[phrase] = (f"easy negative: the teacher did not confuse it with {', '.join(present)} "
                            "(adversarial hard-negative rule)")
    return easy


def _add_pair(builders: dict[str, _SacoBuilder], record: dict[str, Any], pair: dict[str, Any],
              settings: MergeSettings, easy: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Add one labelled, verified pair to PL and SYN (`easy`: why the adversarial rule leaves this negative out of
    SYN); return its decision line."""
    phrase, instances = pair["phrase"], pair["instances"]
    verification = pair.get("verification", {"instances": [{"verdicts": [], "rejected_by": None}] * len(instances),
                                             "pair": {"verdicts": [], "rejected_by": None}})
    pl_status = "positive" if instances else "negative"
    builders["pl"].add_pair(record, phrase, True, {"status": pl_status, "by": "teacher", "reason": "unverified"},
                            [(i, _provenance(record, pair, i, settings.teacher, None)) for i in instances])
    kept = [(inst, v) for inst, v in zip(instances, verification["instances"]) if v["rejected_by"] is None]
    rejected_by = verification["pair"]["rejected_by"]
    pair_verdicts = verification["pair"]["verdicts"]
    reason = "; ".join(f"{v['verifier']}: {v['reason']}" for v in pair_verdicts) or "no exhaustivity verifier"
    if rejected_by is None and not kept and easy is not None:
        status, exhaustive, rejected_by, reason = "dropped", False, "adversarial_rule", easy
    elif rejected_by is None:
        status, exhaustive = ("positive" if kept else "negative"), True
    elif kept and settings.non_exhaustive == "keep_flagged":
        status, exhaustive = "positive_non_exhaustive", False
    else:
        status, exhaustive = "dropped", False
    decision = {"status": status, "by": rejected_by or ("verifiers" if pair_verdicts else "teacher"),
                "reason": reason, "verdicts": pair_verdicts}
    if status != "dropped":
        builders["syn"].add_pair(record, phrase, exhaustive, decision,
                                 [(i, _provenance(record, pair, i, settings.teacher, v["verdicts"])) for i, v in kept])
    return {"image": record["key"], "file_name": record["file_name"], "phrase": phrase, "pl": pl_status,
            "syn": status, "by": decision["by"], "reason": reason, "instances_proposed": len(instances),
            "instances_kept": len(kept),
            "instances_rejected_by": [v["rejected_by"] for v in verification["instances"] if v["rejected_by"]]}
