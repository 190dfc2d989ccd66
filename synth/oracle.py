"""A human-labelled calibration sample from exact labels: the renderer (or an HQ dataset) plays the human.

For each labelled pair of a run whose images have exact labels, the teacher's instances get an MV label
("accept" when the instance overlaps an exact instance of the phrase by at least `iou`, else "reject") and the
pair an EV label ("accept" when every exact instance is covered by an accepted teacher instance, else
"reject"). The result is the file `sam3-adapt synth calibrate --human` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sam3_model.atomic import atomic_write_text
from verifiers.geometric import mask_iou

from .shards import RunDir


def _best_iou(masks: list[dict], targets: list[dict]) -> np.ndarray:
    """Per mask, its best IoU with any target (0 when there is none)."""
    if not masks or not targets:
        return np.zeros(len(masks))
    return np.asarray(mask_iou(masks, targets)).max(axis=1)


def oracle_sample(run_dir: RunDir, num_shards: int, iou: float = 0.5, max_pairs: int | None = None) -> dict[str, Any]:
    """MV and EV entries labelled by the exact labels of a run's label shards (paths relative to the run)."""
    mask_entries, ev_entries = [], []
    for shard in range(num_shards):
        for record in run_dir.read_shard("label", shard):
            if "skipped" in record or not record.get("exact_phrases"):
                continue
            for pair in record["pairs"]:
                if pair["phrase"] not in record["exact_phrases"]:
                    continue
                truth = [e["mask"] for e in record["exact"] if e["phrase"] == pair["phrase"]]
                masks = [i["mask"] for i in pair["instances"]]
                good = _best_iou(masks, truth) >= iou
                for inst, ok in zip(pair["instances"], good):
                    mask_entries.append({"file_name": record["file_name"], "phrase": pair["phrase"],
                                         "mask": inst["mask"], "box_xyxy_px": inst["box_xyxy_px"],
                                         "score": inst["score"], "label": "accept" if ok else "reject"})
                accepted = [m for m, ok in zip(masks, good) if ok]
                covered = bool(np.all(_best_iou(truth, accepted) >= iou)) if truth else True
                ev_entries.append({"file_name": record["file_name"], "phrase": pair["phrase"],
                                   "instances": [{"mask": i["mask"], "box_xyxy_px": i["box_xyxy_px"],
                                                  "score": i["score"]} for i, ok in zip(pair["instances"], good) if ok],
                                   "presence": pair["presence"], "candidates": [
                                       {"mask": c["mask"], "box_xyxy_px": c["box_xyxy_px"], "score": c["score"]}
                                       for c in pair["candidates"]],
                                   "label": "accept" if covered else "reject"})
                if max_pairs is not None and len(ev_entries) >= max_pairs:
                    return {"mask": mask_entries, "exhaustivity": ev_entries}
    return {"mask": mask_entries, "exhaustivity": ev_entries}


def write_oracle_sample(run_dir: RunDir, num_shards: int, iou: float = 0.5) -> Path:
    """Write `human_oracle.json` into the run directory (image paths are relative to it)."""
    data = oracle_sample(run_dir, num_shards, iou)
    return atomic_write_text(run_dir.root / "human_oracle.json", json.dumps(data) + "\n")
