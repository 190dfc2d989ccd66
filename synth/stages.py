"""The three stages, each a function from one shard's input records to its output records.

- generate: source tasks -> image records {key, file_name, width, height, source, exact, exact_phrases}
  (or {key, skipped} for a task that produced no image);
- label: image records -> + "pairs": per ontology phrase the teacher's instances and candidates
  (or the source's exact labels, with `labels: exact`);
- verify: labelled records -> + per pair the mask verdicts of each instance and the exhaustivity verdicts.

Every stage is deterministic per record, so a shard made twice (a resume, a padded distributed sampler) is the
same shard.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from pycocotools import mask as mask_utils
from torch import nn

from sam3_model import storage
from sam3_model.atomic import atomic_write
from sam3_model.images import load_image
from sam3_model.records import Instance, coco_rle
from verifiers.base import VerifyItem
from verifiers.compose import VerifierChain

from .labelling import PseudoLabeller, instance_json
from .ontology import Ontology
from .shards import RunDir
from .sources.base import ImageSource, ProducedImage, Task


class Stage:
    """One stage: its models (moved to the device by Lightning), setup, and per-shard processing."""

    name = "stage"

    def modules(self) -> dict[str, nn.Module]:
        """The torch modules the stage runs (registered on the Lightning module so they move to its device)."""
        return {}

    def setup(self, device: str) -> None:
        """Load or move anything that is not an `nn.Module` (e.g. a diffusers pipeline)."""

    def process(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One shard's output records from its input records."""
        raise NotImplementedError


# ----- generate ----------------------------------------------------------------------------------------------
def _save_image(produced: ProducedImage, images_dir: Path) -> Path:
    """Put the image under `images_dir` atomically: the pool file itself (hard link, copy, or a URL's bytes) or a
    new PNG."""
    if produced.file is not None:
        target = images_dir / f"{produced.key}{PurePosixPath(storage.name_of(produced.file)).suffix.lower()}"
        if storage.is_url(produced.file):
            if not target.is_file():
                data = produced.data if produced.data is not None else storage.read_bytes(produced.file)
                atomic_write(target, lambda handle: handle.write(data))
            return target
        if not target.is_file():
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(produced.file, tmp)
            except OSError:
                shutil.copyfile(produced.file, tmp)
            os.replace(tmp, target)
        return target
    target = images_dir / f"{produced.key}.png"
    atomic_write(target, lambda handle: produced.image.save(handle, format="PNG"))
    return target


class GenerateStage(Stage):
    """Produce every task's image with the source and store it under OUT/images."""

    name = "generate"

    def __init__(self, source: ImageSource, run_dir: RunDir, batch_size: int = 8) -> None:
        self.source, self.run_dir, self.batch_size = source, run_dir, batch_size

    def setup(self, device: str) -> None:
        self.source.setup(device)

    def process(self, records: list[Task]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in range(0, len(records), self.batch_size):
            tasks = records[start : start + self.batch_size]
            for task, produced in zip(tasks, self.source.produce(tasks)):
                if not isinstance(produced, ProducedImage):
                    out.append({"key": task["key"], "skipped": produced.reason})
                    continue
                path = _save_image(produced, self.run_dir.images)
                out.append({
                    "key": produced.key,
                    "file_name": path.relative_to(self.run_dir.root).as_posix(),
                    "width": produced.image.width, "height": produced.image.height,
                    "source": produced.provenance,
                    "exact": [{"phrase": e.phrase, "mask": e.mask} for e in produced.exact],
                    "exact_phrases": list(produced.exact_phrases),
                })
        return out


# ----- label -------------------------------------------------------------------------------------------------
def _box_of(mask_rle: dict) -> list[float]:
    """Tight xyxy pixel box of an RLE mask."""
    x, y, w, h = mask_utils.toBbox(coco_rle(mask_rle)).tolist()
    return [x, y, x + w, y + h]


def exact_pairs(record: dict[str, Any], ontology: Ontology) -> list[dict[str, Any]]:
    """Label pairs from a record's exact labels (score 1): every exhaustive phrase, positives and negatives."""
    pairs = []
    for phrase in record.get("exact_phrases", []):
        instances = [Instance(e["mask"], tuple(_box_of(e["mask"])), 1.0) for e in record["exact"]
                     if e["phrase"] == phrase]
        pairs.append({"phrase": phrase, "kind": "concept" if phrase in ontology else "hard_negative",
                      "presence": 1.0 if instances else 0.0, "prompts": [],
                      "instances": [instance_json(i, "exact") for i in instances], "candidates": []})
    return pairs


class LabelStage(Stage):
    """Pseudo-label every image with the teacher (or copy its exact labels)."""

    name = "label"

    def __init__(self, labeller: PseudoLabeller | None, ontology: Ontology, run_dir: RunDir) -> None:
        self.labeller, self.ontology, self.run_dir = labeller, ontology, run_dir

    def modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.labeller.segmenter.model} if self.labeller is not None else {}

    def process(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for record in records:
            if "skipped" in record:
                out.append(record)
                continue
            if self.labeller is None:
                pairs = exact_pairs(record, self.ontology)
            else:
                image = load_image(self.run_dir.root / record["file_name"], record["file_name"])
                pairs = [label.to_json() for label in self.labeller.label(image)]
            out.append({**record, "pairs": pairs})
        return out


# ----- verify ------------------------------------------------------------------------------------------------
def _instances(entries: Sequence[dict[str, Any]]) -> list[Instance]:
    return [Instance(e["mask"], tuple(e["box_xyxy_px"]), e["score"]) for e in entries]


class VerifyStage(Stage):
    """Run the verifier chain on every pair of every labelled image of a shard (batched across the shard)."""

    name = "verify"

    def __init__(self, chain: VerifierChain, ontology: Ontology, run_dir: RunDir,
                 modules: dict[str, nn.Module] | None = None) -> None:  # fmt: skip
        self.chain, self.ontology, self.run_dir = chain, ontology, run_dir
        self._modules = modules or {}

    def modules(self) -> dict[str, nn.Module]:
        return self._modules

    def process(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items, where = [], []
        for r, record in enumerate(records):
            if "skipped" in record:
                continue
            image = load_image(self.run_dir.root / record["file_name"], record["file_name"])
            for p, pair in enumerate(record["pairs"]):
                items.append(VerifyItem(image=image, phrase=pair["phrase"], instances=_instances(pair["instances"]),
                                        presence=pair["presence"], negatives=self.ontology.confusable_with(pair["phrase"]),
                                        candidates=_instances(pair["candidates"]),
                                        key=f"{record['key']}:{pair['phrase']}"))
                where.append((r, p))
        results = self.chain(items) if items else []
        out = [dict(record) for record in records]
        for (r, p), result in zip(where, results):
            pairs = out[r].setdefault("_pairs", [dict(pair) for pair in out[r]["pairs"]])
            pairs[p]["verification"] = {
                "instances": [{"verdicts": [v.to_json() for v in verdicts], "rejected_by": by}
                              for verdicts, by in zip(result.instance_verdicts, result.instance_rejected_by)],
                "pair": {"verdicts": [v.to_json() for v in result.pair_verdicts],
                         "rejected_by": result.pair_rejected_by},
            }
        for record in out:
            if "_pairs" in record:
                record["pairs"] = record.pop("_pairs")
        return out

