"""The review's answers: an append-only log (each answer fsynced before it is acknowledged), and the three files
rebuilt from it, atomically, after every answer.

    OUT/answers.jsonl     every answer and retraction, in arrival order (the source of truth; a restart resumes)
    OUT/human_sample.json the MV and EV labels in `synth calibrate --human`'s format
    OUT/hq.json           an SA-Co file of the reviewed pairs: accepted and added masks, exhaustivity flags; its
                          file names are the source's own, relative to the source's image folder (`images` in its
                          info: give it beside the path, `{path: hq.json, images: ...}`, to `fit` or a recipe)
    OUT/agreement.json    how each verifier agreed with the reviewers (and agreement.md, the same as tables)

An answer carries a client-made `answer_id`: a retried post of the same answer is acknowledged again, never
stored twice. Each item counts once: its latest answer not retracted. Items are handed out with a lease, so two
reviewers at once get different items.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sam3_model import storage
from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError
from sam3_model.formats import saco_annotation, saco_json, write_json_dataset
from adapt.data.annotations import rle_box_xywh_px
from sam3_model.records import mask_area

from .items import ReviewItem

LEASE_SECONDS = 300.0  # an item handed to a reviewer is not handed to another for this long
MV_LABELS = ("accept", "reject")


class AnswerError(ValueError):
    """An answer the store refuses (unknown item, wrong number of mask answers, a malformed mask...)."""


class ReviewStore:
    """Answers to the sampled items, kept in `out` (see the module docstring)."""

    def __init__(self, out: str | os.PathLike[str], items: list[ReviewItem],
                 image_root: str | os.PathLike[str] | None = None) -> None:
        self.out = Path(out)
        self.image_root = None if image_root is None else (
            str(image_root) if storage.is_url(image_root) else str(Path(image_root).resolve()))
        self.out.mkdir(parents=True, exist_ok=True)
        self.items = {item.key: item for item in items}
        if len(self.items) != len(items):
            raise ConfigError("the review sample names an image-phrase pair twice")
        self.order = [item.key for item in items]
        self.log_path = self.out / "answers.jsonl"
        self.lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.leases: dict[str, tuple[str, float]] = {}  # item key -> (reviewer, expiry)
        self.truncated = self._load()

    # ----- the log ----------------------------------------------------------------------------------------------
    def _load(self) -> int:
        """Read the log; a last line cut by a kill (never acknowledged) is dropped. Returns how many were."""
        if not self.log_path.is_file():
            return 0
        raw = self.log_path.read_bytes()
        lines, cut = raw.split(b"\n"), 0
        if lines and lines[-1]:  # no final newline: the write was cut
            cut = 1
            with open(self.log_path, "r+b") as f:
                f.truncate(len(raw) - len(lines[-1]))
        for line in lines[:-1]:
            if line.strip():
                entry = json.loads(line)
                self.log.append(entry)
                self.seen.add(entry["answer_id"])
        return cut

    def _append(self, entry: dict[str, Any]) -> None:
        """Append one entry and fsync it (the answer is safe before the reviewer is told so)."""
        data = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.log.append(entry)
        self.seen.add(entry["answer_id"])

    def current(self) -> dict[str, dict[str, Any]]:
        """Each answered item's standing answer: its latest answer, unless that one was retracted (undone)."""
        answers: dict[str, dict[str, Any]] = {}
        for entry in self.log:
            if "retract" not in entry:
                answers[entry["item"]] = entry
            elif entry["item"] in answers and answers[entry["item"]]["answer_id"] == entry["retract"]:
                del answers[entry["item"]]
        return answers

    # ----- answering ----------------------------------------------------------------------------------------------
    def submit(self, answer: dict[str, Any]) -> dict[str, Any]:
        """Store one answer {answer_id, item, reviewer, mv: [accept|reject per mask], ev: bool, added: [...]}."""
        with self.lock:
            if answer.get("answer_id") in self.seen:
                return self.progress()  # a retry of an answer already stored
            entry = self._checked(answer)
            self._append(entry)
            self.leases.pop(entry["item"], None)
            self._write_outputs()
            return self.progress()

    def retract(self, answer_id: str, retraction_id: str, reviewer: str = "") -> dict[str, Any]:
        """Undo: the answer `answer_id` no longer counts (its item is to be answered again)."""
        with self.lock:
            if retraction_id in self.seen:
                return self.progress()
            target = next((e for e in self.log if e.get("answer_id") == answer_id and "item" in e), None)
            if target is None:
                raise AnswerError(f"no answer {answer_id!r} to undo")
            self._append({"answer_id": retraction_id, "retract": answer_id, "item": target["item"],
                          "reviewer": reviewer, "time": time.time()})
            self._write_outputs()
            return self.progress()

    def _checked(self, answer: dict[str, Any]) -> dict[str, Any]:
        """The answer as stored; `AnswerError` saying what is wrong with it."""
        answer_id, key = answer.get("answer_id"), answer.get("item")
        if not isinstance(answer_id, str) or not answer_id:
            raise AnswerError("an answer needs an answer_id")
        item = self.items.get(key)
        if item is None:
            raise AnswerError(f"no item {key!r} in this review")
        mv = answer.get("mv")
        if not isinstance(mv, list) or len(mv) != len(item.instances) or any(m not in MV_LABELS for m in mv):
            raise AnswerError(f"{key}: mv must be one of {MV_LABELS} per mask ({len(item.instances)} masks)")
        if not isinstance(answer.get("ev"), bool):
            raise AnswerError(f"{key}: ev must be true (every instance is masked) or false")
        added = answer.get("added") or []
        for k, extra in enumerate(added):
            mask = extra.get("mask") if isinstance(extra, dict) else None
            if not isinstance(mask, dict) or list(mask.get("size", [])) != [item.height, item.width]:
                raise AnswerError(f"{key}: added[{k}] needs a mask RLE of the image's size {item.height}x{item.width}")
        return {"answer_id": answer_id, "item": key, "reviewer": str(answer.get("reviewer") or "anonymous"),
                "time": time.time(), "mv": mv, "ev": answer["ev"],
                "added": [{"mask": a["mask"], "box_xyxy_px": a.get("box_xyxy_px"), "via": a.get("via", "model")}
                          for a in added]}

    # ----- handing out items ----------------------------------------------------------------------------------
    def next_item(self, reviewer: str, skip: set[str] = frozenset()) -> ReviewItem | None:
        """The first item not answered, not leased to another reviewer and not in `skip`; leased to `reviewer`."""
        with self.lock:
            answered, now = self.current(), time.time()
            for key in self.order:
                holder = self.leases.get(key)
                if key in answered or key in skip or (holder and holder[0] != reviewer and holder[1] > now):
                    continue
                self.leases[key] = (reviewer, now + LEASE_SECONDS)
                return self.items[key]
            return None

    def progress(self) -> dict[str, Any]:
        """How far the review is: answered items of the sample."""
        return {"answered": len(self.current()), "total": len(self.order)}

    # ----- outputs --------------------------------------------------------------------------------------------
    def _write_outputs(self) -> None:
        answers = self.current()
        reviewed = [(self.items[k], answers[k]) for k in self.order if k in answers]
        atomic_write_text(self.out / "human_sample.json", json.dumps(self._human_sample(reviewed), indent=1) + "\n")
        write_json_dataset(self.out / "hq.json", self._hq(reviewed))
        stats = agreement(reviewed)
        atomic_write_text(self.out / "agreement.json", json.dumps(stats, indent=2) + "\n")
        atomic_write_text(self.out / "agreement.md", agreement_markdown(stats))

    def _file_name(self, item: ReviewItem) -> str:
        """How human_sample.json names the image: relative to the output folder, or its URL."""
        if storage.is_url(item.image_path):
            return str(item.image_path)
        return os.path.relpath(Path(item.image_path).resolve(), self.out.resolve())

    def _human_sample(self, reviewed: list[tuple[ReviewItem, dict[str, Any]]]) -> dict[str, Any]:
        """MV: one entry per shown mask with the reviewer's label; EV: one per pair, accept when the shown masks
        the reviewer accepted were already every instance (exhaustive, nothing added)."""
        mask, exhaustivity = [], []
        for item, answer in reviewed:
            name = self._file_name(item)
            for inst, label in zip(item.instances, answer["mv"]):
                mask.append({"file_name": name, "phrase": item.phrase, "mask": inst.mask,
                             "box_xyxy_px": inst.box_xyxy_px, "score": 1.0 if inst.score is None else inst.score,
                             "label": label})
            kept = [{"mask": i.mask, "box_xyxy_px": i.box_xyxy_px, "score": 1.0 if i.score is None else i.score}
                    for i, label in zip(item.instances, answer["mv"]) if label == "accept"]
            exhaustivity.append({"file_name": name, "phrase": item.phrase, "instances": kept,
                                 "label": "accept" if answer["ev"] and not answer["added"] else "reject"})
        return {"mask": mask, "exhaustivity": exhaustivity}

    def _hq(self, reviewed: list[tuple[ReviewItem, dict[str, Any]]]) -> dict[str, Any]:
        """SA-Co: per reviewed pair its accepted and added masks; exhaustive as the reviewer said."""
        pairs, annotations = [], []
        for item, answer in reviewed:
            pair_id = len(pairs) + 1
            pairs.append({"id": pair_id, "file_name": item.file_name, "height": item.height, "width": item.width,
                          "text_input": item.phrase, "is_instance_exhaustive": answer["ev"],
                          "source_image_id": item.image_id, "reviewer": answer["reviewer"]})
            masks = [i.mask for i, label in zip(item.instances, answer["mv"]) if label == "accept"]
            masks += [a["mask"] for a in answer["added"]]
            for mask in masks:  # boxes: the masks' tight boxes (pycocotools, without decoding them)
                annotations.append(saco_annotation(len(annotations) + 1, pair_id, rle_box_xywh_px(mask).tolist(),
                                                   item.width, item.height, mask_area(mask), mask))
        return saco_json(pairs, annotations, {"description": "human-verified with sam3-adapt review",
                                              "variant": "hq", "images": self.image_root})


def agreement(reviewed: list[tuple[ReviewItem, dict[str, Any]]]) -> dict[str, Any]:
    """Per verifier (and the verifiers' final decision), how often it agreed with the reviewer on masks (MV)."""
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for item, answer in reviewed:
        for inst, human in zip(item.instances, answer["mv"]):
            if inst.decision != "none":
                counts["verifiers' decision"][human]["accept" if inst.decision == "kept" else "reject"] += 1
            for verdict in inst.verdicts:
                option = "accept" if verdict.get("option") == "accept" else "reject"
                counts[str(verdict.get("verifier"))][human][option] += 1
    stats = {"reviewed_pairs": len(reviewed),
             "reviewed_masks": sum(len(item.instances) for item, _ in reviewed),
             "added_masks": sum(len(a["added"]) for _, a in reviewed),
             "exhaustive_pairs": sum(bool(a["ev"]) for _, a in reviewed),
             "reviewers": sorted({a["reviewer"] for _, a in reviewed}), "mv": {}}
    for name, table in counts.items():
        n = sum(sum(row.values()) for row in table.values())
        agree = sum(table[o][o] for o in MV_LABELS)
        tp, fp = table["accept"]["accept"], table["reject"]["accept"]
        stats["mv"][name] = {"n": n, "agreement": agree / n if n else None,
                             "accept_precision": tp / (tp + fp) if tp + fp else None,
                             "confusion": {h: dict(table[h]) for h in MV_LABELS if h in table}}
    return stats


def agreement_markdown(stats: dict[str, Any]) -> str:
    """agreement.md: the MV agreement table, one row per verifier."""
    lines = ["# Reviewers against the verifiers", "",
             f"{stats['reviewed_pairs']} pairs reviewed ({stats['reviewed_masks']} masks judged, "
             f"{stats['added_masks']} added, {stats['exhaustive_pairs']} exhaustive) by "
             f"{', '.join(stats['reviewers']) or 'nobody yet'}.", "",
             "| verifier | masks | agreement | precision of its accepts | human accept -> verifier reject | "
             "human reject -> verifier accept |", "|---|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    for name, row in stats["mv"].items():
        missed = row["confusion"].get("accept", {}).get("reject", 0)  # the human accepted, the verifier rejected
        let_in = row["confusion"].get("reject", {}).get("accept", 0)  # the human rejected, the verifier accepted
        lines.append(f"| {name} | {row['n']} | {fmt(row['agreement'])} | {fmt(row['accept_precision'])} | "
                     f"{missed} | {let_in} |")
    return "\n".join(lines) + "\n"
