"""What a reviewer looks at: image-phrase pairs with their masks, read from a synth run or a COCO / SA-Co file,
and the sample to review (stratified by phrase and by the verifiers' decision, or everything)."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sam3_model import storage
from sam3_model.errors import ConfigError
from sam3_model.records import RLE

from ..shards import RunDir


@dataclass
class ReviewInstance:
    """One mask shown to the reviewer, with what the verifiers said of it."""

    mask: RLE
    box_xyxy_px: list[float]
    score: float | None = None
    decision: str = "none"  # "kept" / "rejected" by the verifiers, or "none" (no verifier ran: a dataset file)
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # {"verifier", "option", "reason", ...}


@dataclass
class ReviewItem:
    """One image-phrase pair: the image, the phrase and the masks proposed for it."""

    key: str  # unique in the source: "<image key>|<phrase>"
    image_path: Path | str  # a local file, or an fsspec URL (text)
    file_name: str  # as the source names the image (kept in the outputs)
    image_id: int | str
    width: int
    height: int
    phrase: str
    instances: list[ReviewInstance]

    @property
    def decision(self) -> str:
        """The verifiers' decision on the pair: "kept" (an instance kept), "rejected" (all rejected), "empty"."""
        if not self.instances:
            return "empty"
        if any(i.decision in ("kept", "none") for i in self.instances):
            return "kept"
        return "rejected"

    def to_json(self) -> dict[str, Any]:
        """What the page needs (the image is served separately)."""
        return {"key": self.key, "phrase": self.phrase, "width": self.width, "height": self.height,
                "file_name": self.file_name, "decision": self.decision,
                "instances": [{"mask": i.mask, "box_xyxy_px": i.box_xyxy_px, "score": i.score,
                               "decision": i.decision, "verdicts": i.verdicts} for i in self.instances]}


def read_items(source: str | Path, images: str | Path | None = None) -> list[ReviewItem]:
    """Every image-phrase pair of a synth run folder (its verify stage) or a COCO / SA-Co file."""
    source = Path(source)
    if source.is_dir():
        return _from_run(source)
    if source.is_file():
        return _from_dataset(source, images)
    raise ConfigError(f"{source}: no such synth run folder or dataset file")


def _from_run(root: Path) -> list[ReviewItem]:
    """A synth run: the verify stage's records (every proposed instance with its verdicts)."""
    run = RunDir(root)
    shards = sorted(run.stage_dir("verify").glob("shard-*.json"))
    if not shards:
        raise ConfigError(f"{root}: no verify stage here (stages/verify/shard-*.json); run `synth run` first, or "
                          "pass a dataset file")
    items = []
    for path in shards:
        for record in run.read_shard("verify", int(path.stem.split("-")[1])):
            if "skipped" in record:
                continue
            for pair in record["pairs"]:
                checks = pair.get("verification", {}).get("instances") or [{}] * len(pair["instances"])
                instances = [ReviewInstance(inst["mask"], list(inst["box_xyxy_px"]), inst.get("score"),
                                            "rejected" if check.get("rejected_by") else "kept",
                                            list(check.get("verdicts", [])))
                             for inst, check in zip(pair["instances"], checks)]
                items.append(ReviewItem(f"{record['key']}|{pair['phrase']}", root / record["file_name"],
                                        record["file_name"], record["key"], record["width"], record["height"],
                                        pair["phrase"], instances))
    return items


def _from_dataset(path: Path, images: str | Path | None) -> list[ReviewItem]:
    """A COCO or SA-Co file: its pairs with their masks (no verifier decisions)."""
    from adapt.data.annotations import image_folder
    from adapt.data.readers import read_dataset
    from sam3_model.records import encode_mask

    read = read_dataset(path, image_root=images)
    if read.problems:
        raise ConfigError(str(read.problems[0]) + (f" (and {len(read.problems) - 1} more problems)"
                                                   if len(read.problems) > 1 else ""))
    items = []
    for sample in read.samples:
        for phrase in sample.phrases:
            instances = []
            for k, (x, y, w, h) in enumerate(phrase.boxes_xywh_px.tolist()):
                if phrase.masks is not None:
                    mask = phrase.masks[k]
                else:  # a boxes-only dataset: the box is the mask to judge
                    mask = encode_mask(box_mask((x, y, x + w, y + h), sample.height, sample.width))
                instances.append(ReviewInstance(mask, [x, y, x + w, y + h]))
            root = image_folder(path, images)
            if storage.is_url(root):  # file names joined to a URL root with "/"
                file_name = str(sample.image_path)[len(root) + 1:]
                image_path: Path | str = str(sample.image_path)
            else:
                file_name = str(Path(sample.image_path).relative_to(root))
                image_path = Path(sample.image_path)
            items.append(ReviewItem(f"{sample.image_id}|{phrase.phrase}", image_path, file_name,
                                    sample.image_id, sample.width, sample.height, phrase.phrase, instances))
    return items


def box_mask(box_xyxy_px: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 mask of the pixels a box covers (its edges rounded outwards)."""
    x0, y0, x1, y1 = box_xyxy_px
    mask = np.zeros((height, width), np.uint8)
    mask[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = 1
    return mask



def sample_items(items: list[ReviewItem], how: Literal["stratified", "all"] = "stratified", per_stratum: int = 10,
                 seed: int = 0) -> list[ReviewItem]:
    """The items to review: all of them, or up to `per_stratum` per (phrase, verifiers' decision), drawn with
    `seed`, interleaved across strata so a partial review is still balanced."""
    if how == "all":
        return list(items)
    if how != "stratified":
        raise ConfigError(f"sample must be 'stratified' or 'all', got {how!r}")
    if per_stratum < 1:
        raise ConfigError(f"per_stratum must be >= 1, got {per_stratum}")
    strata: dict[tuple[str, str], list[ReviewItem]] = defaultdict(list)
    for item in items:
        strata[(item.phrase, item.decision)].append(item)
    rng = random.Random(seed)
    drawn = {key: rng.sample(group, min(per_stratum, len(group))) for key, group in sorted(strata.items())}
    order = []
    for k in range(per_stratum):  # round robin over strata
        order += [group[k] for _, group in sorted(drawn.items()) if k < len(group)]
    return order
