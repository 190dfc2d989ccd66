"""Measure verifiers against a human-labelled sample, pick accept thresholds, and write a report.

Human sample file (JSON, or YAML by its .yaml / .yml suffix); image paths are relative to the file's folder (or fsspec URLs):

    {"mask": [{"file_name": "img.png", "phrase": "red square", "mask": <COCO RLE of the image size>,
               "box_xyxy_px": [x0, y0, x1, y1],   # optional: the mask's tight box
               "score": 0.9,                      # optional: 1.0
               "negatives": ["blue square"],      # optional
               "label": "accept"}],               # one of MV_OPTIONS
     "exhaustivity": [{"file_name": "img.png", "phrase": "red square",
                       "instances": [{"mask": <RLE>, "box_xyxy_px": ..., "score": ...}],
                       "presence": 0.8,           # optional
                       "candidates": [...],       # optional: like instances
                       "negatives": [...],        # optional
                       "label": "reject"}]}       # one of EV_OPTIONS

Each MV entry is one item with one instance. Thresholds are applied the way `base.thresholded` does: an accept
whose accept_score is below the threshold becomes a reject (a reject never becomes an accept).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from sam3_model.atomic import atomic_write, atomic_write_text
from sam3_model import storage
from sam3_model.errors import DatasetError, ImageError
from sam3_model.images import load_image
from sam3_model.formats import FormatProblem, check_rle
from sam3_model.records import RLE, Instance, decode_mask

from .base import EV_OPTIONS, MV_OPTIONS, UNPARSED, ExhaustivityVerifier, MaskVerifier, Verdict, VerifyItem
from .geometric import mask_box

# The paper's fine-tuned verifiers vs humans (SAM 3 §D.4, average over domains), and human vs human.
PAPER_ACCURACY = {"mv": {"ai": 0.777, "human": 0.750}, "ev": {"ai": 0.811, "human": 0.818}}


class _Bad(Exception):
    """A malformed entry field; re-raised as DatasetError naming the file and entry."""


@dataclass
class HumanSample:
    """Human-labelled items: MV items (one instance each) and EV items, each with its label."""

    path: Path
    mask: list[tuple[VerifyItem, str]] = field(default_factory=list)
    exhaustivity: list[tuple[VerifyItem, str]] = field(default_factory=list)


def _number(value, what: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad(f"{what} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise _Bad(f"{what} {value} is outside [{low:g}, {high:g}]")
    return float(value)


def _rle(value, size_hw: tuple[int, int], what: str) -> RLE:
    """A compressed str-counts RLE of the image size from a compressed or uncompressed COCO RLE (checked runs)."""
    if not isinstance(value, dict):
        raise _Bad(f"{what} must be a COCO RLE {{'size': [H, W], 'counts': ...}}, got {type(value).__name__}")
    try:
        return check_rle(value, *size_hw)
    except FormatProblem as err:
        raise _Bad(f"{what}: {err}") from None


def _instance(value, size_hw: tuple[int, int], what: str = "") -> Instance:
    """An Instance from {mask, box_xyxy_px?, score?}; `what` names it in errors ("instances[2]", "" for MV)."""
    prefix = f"{what}." if what else ""
    if not isinstance(value, dict):
        raise _Bad(f"{what} must be a mapping with 'mask', got {type(value).__name__}")
    unknown = sorted(set(value) - {"mask", "box_xyxy_px", "score"})
    if unknown:
        raise _Bad(f"{what}: unknown keys {unknown}; expected mask, box_xyxy_px, score")
    if "mask" not in value:
        raise _Bad(f"{what}: 'mask' is missing")
    rle = _rle(value["mask"], size_hw, f"{prefix}mask")
    box = value.get("box_xyxy_px")
    if box is None:
        box = mask_box(decode_mask(rle).astype(bool)) or (0.0, 0.0, 0.0, 0.0)
    else:
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise _Bad(f"{prefix}box_xyxy_px must be [x0, y0, x1, y1], got {box!r}")
        box = tuple(_number(b, f"{prefix}box_xyxy_px") for b in box)
        if box[2] < box[0] or box[3] < box[1]:
            raise _Bad(f"{prefix}box_xyxy_px {list(box)} has x1 < x0 or y1 < y0")
    score = _number(value.get("score", 1.0), f"{prefix}score", 0.0, 1.0)
    return Instance(mask=rle, box_xyxy_px=tuple(float(b) for b in box), score=score)


class _Images:
    """Images of the sample, read once each (so entries on one image share one PIL object)."""

    def __init__(self, root: Path) -> None:
        self.root, self.cache = root, {}

    def get(self, file_name) -> Image.Image:
        if not isinstance(file_name, str) or not file_name:
            raise _Bad(f"file_name must be a non-empty string, got {file_name!r}")
        path = file_name if storage.is_url(file_name) else (self.root / file_name).resolve()  # a URL: as written
        if path not in self.cache:
            try:
                found = storage.is_file(path)
            except OSError as err:
                raise _Bad(f"cannot read image {file_name!r} ({err})") from None
            if not found:
                raise _Bad(f"image {file_name!r} not found" + ("" if storage.is_url(path) else f" in {self.root}"))
            try:
                self.cache[path] = load_image(path, str(path))
            except ImageError as err:
                raise _Bad(f"cannot read image {file_name!r} ({err})") from None
        return self.cache[path]


_ENTRY_KEYS = {
    "mask": ({"file_name", "phrase", "mask", "label"}, {"box_xyxy_px", "score", "negatives"}),
    "exhaustivity": ({"file_name", "phrase", "instances", "label"}, {"presence", "candidates", "negatives"}),
}


def _entry(entry, section: str, images: _Images) -> tuple[VerifyItem, str]:
    required, optional = _ENTRY_KEYS[section]
    if not isinstance(entry, dict):
        raise _Bad(f"expected a mapping, got {type(entry).__name__}")
    missing, unknown = sorted(required - set(entry)), sorted(set(entry) - required - optional)
    if missing:
        raise _Bad(f"missing {', '.join(missing)}")
    if unknown:
        raise _Bad(f"unknown keys {unknown}; expected {', '.join(sorted(required | optional))}")
    options = MV_OPTIONS if section == "mask" else EV_OPTIONS
    label = entry["label"]
    if label not in options:
        raise _Bad(f"label {label!r} is not one of {', '.join(options)}")
    phrase = entry["phrase"]
    if not isinstance(phrase, str) or not phrase.strip():
        raise _Bad(f"phrase must be a non-empty string, got {phrase!r}")
    negatives = entry.get("negatives", [])
    if not isinstance(negatives, list) or not all(isinstance(n, str) and n.strip() for n in negatives):
        raise _Bad(f"negatives must be a list of non-empty strings, got {negatives!r}")
    image = images.get(entry["file_name"])
    size_hw = (image.height, image.width)
    key = f"{entry['file_name']}: {phrase}"
    if section == "mask":
        instance = _instance({k: entry[k] for k in ("mask", "box_xyxy_px", "score") if k in entry}, size_hw)
        return VerifyItem(image, phrase, [instance], negatives=negatives, key=key), label
    lists = {}
    for name in ("instances", "candidates"):
        value = entry.get(name, [])
        if not isinstance(value, list):
            raise _Bad(f"{name} must be a list, got {type(value).__name__}")
        lists[name] = [_instance(v, size_hw, f"{name}[{k}]") for k, v in enumerate(value)]
    presence = entry.get("presence")
    presence = None if presence is None else _number(presence, "presence", 0.0, 1.0)
    return VerifyItem(image, phrase, lists["instances"], presence=presence, negatives=negatives,
                      candidates=lists["candidates"], key=key), label


def read_human_sample(path: str | os.PathLike) -> HumanSample:
    """Read a human-labelled sample (see the module docstring); `DatasetError` naming the file and entry."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such human sample file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read the file ({type(err).__name__}: {err})") from None
    try:
        data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DatasetError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}"
                           f" ({first})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with 'mask' and/or 'exhaustivity' lists")
    unknown = sorted(set(data) - set(_ENTRY_KEYS))
    if unknown:
        raise DatasetError(f"{path}: unknown top-level keys {unknown}; expected 'mask' and/or 'exhaustivity'")
    sample, images = HumanSample(path), _Images(path.parent)
    for section in _ENTRY_KEYS:
        entries = data.get(section) or []
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: {section} must be a list of entries, got {type(entries).__name__}")
        for k, entry in enumerate(entries):
            try:
                getattr(sample, section).append(_entry(entry, section, images))
            except _Bad as err:
                raise DatasetError(f"{path}: {section}[{k}]: {err}") from None
    if not sample.mask and not sample.exhaustivity:
        raise DatasetError(f"{path}: no entries; add 'mask' and/or 'exhaustivity' entries")
    return sample


@dataclass
class VerifierCalibration:
    """How one verifier's verdicts agree with human labels, and the accept threshold that reaches a precision.

    Precision / recall / F1 are those of "accept" (positives: items humans labelled accept); None when undefined
    (no predicted or no human accept). `option_recall[o]`: of the items humans labelled `o`, the fraction the
    verifier answered `o` (None when humans never chose `o`). `confusion[human][verifier]`: counts, verifier
    columns including UNPARSED. `threshold`: the lowest accept_score threshold whose precision >= the target
    (so the highest recall that meets it), or None, with `threshold_note` saying why. `pr_curve`: precision and
    recall at every candidate threshold (the distinct accept_scores of accepted verdicts), ascending.
    """

    n: int
    options: tuple[str, ...]
    accuracy: float
    precision: float | None
    recall: float | None
    f1: float | None
    option_recall: dict[str, float | None]
    confusion: dict[str, dict[str, int]]
    target_precision: float
    threshold: float | None
    threshold_precision: float | None
    threshold_recall: float | None
    threshold_note: str
    pr_curve: list[dict[str, float | None]]

    @property
    def task(self) -> str:
        """'mv', 'ev' or 'custom', from the options."""
        return {MV_OPTIONS: "mv", EV_OPTIONS: "ev"}.get(tuple(self.options), "custom")

    def to_json(self) -> dict:
        """A JSON-ready dict."""
        return {"task": self.task, **asdict(self), "options": list(self.options)}


def _precision_recall(accepted: np.ndarray, positive: np.ndarray) -> tuple[float | None, float | None]:
    tp = int((accepted & positive).sum())
    precision = tp / int(accepted.sum()) if accepted.any() else None
    recall = tp / int(positive.sum()) if positive.any() else None
    return precision, recall


def calibrate(
    verdicts: Sequence[Verdict], labels: Sequence[str], options: Sequence[str], target_precision: float = 0.9
) -> VerifierCalibration:
    """Compare `verdicts` with human `labels` (one each, in `options`) and pick an accept threshold."""
    options = tuple(options)
    if len(verdicts) != len(labels):
        raise ValueError(f"{len(verdicts)} verdicts for {len(labels)} labels; give one verdict per label")
    if not verdicts:
        raise ValueError("nothing to calibrate: no verdicts")
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    bad_labels = sorted({lab for lab in labels if lab not in options})
    if bad_labels:
        raise ValueError(f"labels {bad_labels} are not among the options {', '.join(options)}")
    columns = (*options, UNPARSED)
    bad_options = sorted({v.option for v in verdicts if v.option not in columns})
    if bad_options:
        raise ValueError(f"verdict options {bad_options} are not among {', '.join(columns)}")

    said = np.array([v.option for v in verdicts])
    truth = np.array(list(labels))
    scores = np.array([v.accept_score for v in verdicts], dtype=float)
    positive, accepted = truth == "accept", said == "accept"
    precision, recall = _precision_recall(accepted, positive)
    f1 = None if precision is None or recall is None else (
        0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    confusion = {h: {c: int(((truth == h) & (said == c)).sum()) for c in columns} for h in options}
    option_recall = {h: (confusion[h][h] / int((truth == h).sum()) if (truth == h).any() else None)
                     for h in options}

    curve = []
    for t in np.unique(scores[accepted]):
        p, r = _precision_recall(accepted & (scores >= t), positive)
        curve.append({"threshold": float(t), "precision": p, "recall": r})
    chosen = next((pt for pt in curve if pt["precision"] is not None
                   and pt["precision"] >= target_precision - 1e-12), None)
    if chosen is not None:
        note = (f"lowest threshold with accept precision >= {target_precision:g}: {chosen['threshold']:.4f} "
                f"(precision {chosen['precision']:.3f}, recall {_fmt(chosen['recall'])})")
    elif not accepted.any():
        note = "the verifier accepts nothing: no threshold to pick"
    else:
        best = max(curve, key=lambda pt: (pt["precision"], -pt["threshold"]))
        note = (f"no threshold reaches accept precision {target_precision:g}; the best is {best['precision']:.3f} "
                f"at threshold {best['threshold']:.4f}")
    return VerifierCalibration(
        n=len(verdicts), options=options, accuracy=float((said == truth).mean()), precision=precision,
        recall=recall, f1=f1, option_recall=option_recall, confusion=confusion, target_precision=target_precision,
        threshold=None if chosen is None else chosen["threshold"],
        threshold_precision=None if chosen is None else chosen["precision"],
        threshold_recall=None if chosen is None else chosen["recall"], threshold_note=note, pr_curve=curve,
    )


def evaluate_verifiers(
    sample: HumanSample,
    mask_verifiers: Sequence[MaskVerifier],
    exhaustivity_verifiers: Sequence[ExhaustivityVerifier],
    target_precision: float = 0.9,
) -> dict[str, VerifierCalibration]:
    """Run each verifier alone on its part of `sample` and calibrate it: keys "mv:<name>" and "ev:<name>"."""
    results: dict[str, VerifierCalibration] = {}
    if sample.mask:
        items, labels = zip(*sample.mask)
        for verifier in mask_verifiers:
            verdicts = [row[0] for row in verifier.verify_masks(list(items))]
            results[f"mv:{verifier.name}"] = calibrate(verdicts, list(labels), MV_OPTIONS, target_precision)
    if sample.exhaustivity:
        items, labels = zip(*sample.exhaustivity)
        for verifier in exhaustivity_verifiers:
            verdicts = verifier.verify_exhaustivity(list(items))
            results[f"ev:{verifier.name}"] = calibrate(verdicts, list(labels), EV_OPTIONS, target_precision)
    return results


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _markdown(results: dict[str, VerifierCalibration]) -> str:
    lines = [
        "# Verifier calibration against human labels",
        "",
        ("Precision, recall and F1 are those of *accept* (positives: items humans labelled accept). The threshold "
         "is on accept_score, applied like `verifiers.base.thresholded` (an accept below it becomes a reject): "
         "the lowest one whose accept precision reaches the target, i.e. the most recall that meets it."),
        "",
        (f"For scale: the paper's fine-tuned verifiers (SAM 3 §D.4) agree with humans "
         f"{PAPER_ACCURACY['mv']['ai']:.1%} (MV) and {PAPER_ACCURACY['ev']['ai']:.1%} (EV) of the time on average; "
         f"one human agrees with the others {PAPER_ACCURACY['mv']['human']:.1%} (MV) and "
         f"{PAPER_ACCURACY['ev']['human']:.1%} (EV)."),
        "",
        ("| verifier | task | n | accuracy | precision | recall | F1 | target precision | threshold "
         "| precision at it | recall at it |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cal in results.items():
        lines.append(f"| {name} | {cal.task} | {cal.n} | {cal.accuracy:.3f} | {_fmt(cal.precision)} | "
                     f"{_fmt(cal.recall)} | {_fmt(cal.f1)} | {cal.target_precision:g} | {_fmt(cal.threshold, 4)} | "
                     f"{_fmt(cal.threshold_precision)} | {_fmt(cal.threshold_recall)} |")
    for name, cal in results.items():
        columns = (*cal.options, UNPARSED)
        lines += [
            "", f"## {name}", "",
            "| metric | value |", "|---|---|",
            f"| n | {cal.n} |", f"| accuracy | {cal.accuracy:.3f} |", f"| precision (accept) | {_fmt(cal.precision)} |",
            f"| recall (accept) | {_fmt(cal.recall)} |", f"| F1 (accept) | {_fmt(cal.f1)} |",
            f"| threshold | {_fmt(cal.threshold, 4)} |", f"| precision at threshold | {_fmt(cal.threshold_precision)} |",
            f"| recall at threshold | {_fmt(cal.threshold_recall)} |",
            "", f"Threshold: {cal.threshold_note}.", "",
            "Per-option agreement (of the items humans labelled the option, the fraction the verifier also chose):",
            "", "| human option | n | agreement |", "|---|---|---|",
        ]
        for option in cal.options:
            lines.append(f"| {option} | {sum(cal.confusion[option].values())} | {_fmt(cal.option_recall[option])} |")
        lines += ["", "Confusion (rows: human, columns: verifier):", "",
                  "| human \\ verifier | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for option in cal.options:
            lines.append(f"| {option} | " + " | ".join(str(cal.confusion[option][c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _plot_png(results: dict[str, VerifierCalibration]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, cal in results.items():
        points = [(pt["recall"], pt["precision"]) for pt in cal.pr_curve
                  if pt["recall"] is not None and pt["precision"] is not None]
        if not points:
            continue
        recall, precision = zip(*points)
        (line,) = ax.plot(recall, precision, marker=".", label=name)
        if cal.threshold is not None:
            ax.scatter([cal.threshold_recall], [cal.threshold_precision], s=80, facecolors="none",
                       edgecolors=line.get_color(), zorder=3)
    for target in sorted({cal.target_precision for cal in results.values()}):
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="recall (accept)", ylabel="precision (accept)", xlim=(0, 1.02), ylim=(0, 1.02),
           title="Verifier precision-recall vs humans (circle: chosen threshold)")
    if ax.lines:
        ax.legend(fontsize=8, loc="lower left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_calibration_report(results: dict[str, VerifierCalibration], out_dir: str | os.PathLike) -> Path:
    """Write calibration.json, calibration.md and calibration.png (PR curves) to `out_dir`, each atomically;
    return the path of calibration.md."""
    out = Path(out_dir)
    atomic_write_text(out / "calibration.json", json.dumps(
        {"paper_accuracy_vs_humans": PAPER_ACCURACY,
         "verifiers": {name: cal.to_json() for name, cal in results.items()}}, indent=2))
    png = _plot_png(results)
    atomic_write(out / "calibration.png", lambda handle: handle.write(png))
    return atomic_write_text(out / "calibration.md", _markdown(results))
