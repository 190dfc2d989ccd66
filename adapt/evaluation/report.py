"""The evaluation report: a summary table, an F1-versus-IoU-threshold plot, and the phrases that fail most.

`write_report` takes the metrics dict and any result object with `f1_by_threshold` (name -> 10 values over
IoU 0.50:0.05:0.95) and `per_pair` (objects with `phrase`, `num_gt`, `num_pred`, `il_outcome` and a local F1
per threshold or None), so it does not depend on how the cgF1 evaluator is written.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam3_model.atomic import atomic_write, atomic_write_text

FAMILY = ("cgF1", "pmF1", "F1", "precision", "recall", "positive_micro_precision", "positive_macro_F1")
HIDDEN = ("positive_micro_F1",)  # the same numbers as pmF1
COUNT_KEY = re.compile(r"^(num_|n_|IL_(TP|FP|TN|FN)$|(pm)?(TP|FP|FN)(@|$))")
FIRST = ("IL_MCC",)  # leads the table of single numbers
AP_ORDER = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IL_OUTCOMES = ("TP", "FP", "TN", "FN")
LOCAL_F1_NAMES = ("local_f1", "f1", "local_f1_by_threshold", "f1_by_threshold")


@dataclass
class PhraseRow:
    """One phrase's outcome over its pairs."""

    phrase: str
    pairs: int = 0
    positives: int = 0
    gt_instances: int = 0
    predictions: int = 0
    il: dict[str, int] = field(default_factory=lambda: dict.fromkeys(IL_OUTCOMES, 0))
    local_f1: list[np.ndarray] = field(default_factory=list)  # one (T,) per positive pair

    @property
    def f1(self) -> float | None:
        """Mean local F1 (over thresholds, then over positive pairs); None for a phrase without positives."""
        return float(np.mean([f.mean() for f in self.local_f1])) if self.local_f1 else None

    @property
    def f1_at_50(self) -> float | None:
        """Mean local F1 at IoU 0.5 over positive pairs."""
        return float(np.mean([f[0] for f in self.local_f1])) if self.local_f1 else None

    @property
    def negatives(self) -> int:
        """Pairs with no ground truth (the phrase is absent)."""
        return self.pairs - self.positives

    def sort_key(self) -> tuple:
        """Worst first: low F1 (negative-only phrases: 1 - their false-positive rate), then more FPs on negatives."""
        fp = self.il["FP"]
        score = self.f1 if self.f1 is not None else 1.0 - fp / max(self.negatives, 1)
        return (score, -fp, -self.gt_instances, self.phrase)


def write_report(
    metrics: Mapping[str, Any],
    result: Any,
    path_md: str | os.PathLike[str],
    title: str,
    max_phrases: int | None = 100,
) -> Path:
    """Write `path_md` (markdown) and the F1-vs-IoU plot beside it (same name, .png); return the markdown path."""
    path_md = Path(path_md)
    png = path_md.with_suffix(".png")
    curves = dict(getattr(result, "f1_by_threshold", {}) or {})
    thresholds = _thresholds(result, curves)
    if curves:
        write_plot(curves, thresholds, png, title)
    rows = phrase_rows(getattr(result, "per_pair", []) or [])
    text = "\n".join(
        [f"# {title}", ""]
        + summary_section(metrics)
        + plot_section(png.name if curves else None, curves, thresholds)
        + phrase_section(rows, max_phrases)
    )
    return atomic_write_text(path_md, text)


# --------------------------------------------------------------------------------------------- summary


def summary_section(metrics: Mapping[str, Any]) -> list[str]:
    """Markdown lines: the cgF1 family (x100) at 0.50:0.95 / 0.5 / 0.75, then COCO AP, then the other numbers."""
    lines = ["## Summary", ""]
    family = [name for name in FAMILY if any(k in metrics for k in (name, f"{name}@0.5", f"{name}@0.75"))]
    if family:
        lines += ["| metric (x100) | IoU 0.50:0.95 | IoU 0.5 | IoU 0.75 |", "|---|---:|---:|---:|"]
        for name in family:
            cells = [_family_cell(metrics.get(key)) for key in (name, f"{name}@0.5", f"{name}@0.75")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "n/a: undefined (the evaluator reports -1, e.g. no pair has both ground truth and predictions).",
            "",
        ]
    ap = [key for key in AP_ORDER if key in metrics]
    if ap:
        lines += ["| COCO (x100) | " + " | ".join(ap) + " |", "|---" + "|---:" * len(ap) + "|"]
        lines += [f"| {iou_type_label(metrics)} | " + " | ".join(_ap_cell(metrics[k]) for k in ap) + " |", ""]
        lines += ["n/a: no ground truth in that area range (pycocotools reports -1).", ""]
    used = set(ap) | {k for name in family + list(HIDDEN) for k in (name, f"{name}@0.5", f"{name}@0.75")}
    rest = [k for k in FIRST if k in metrics] + [k for k in metrics if k not in used and k not in FIRST]
    if rest:
        lines += ["| quantity | value |", "|---|---:|"] + [f"| {k} | {_num(k, metrics[k])} |" for k in rest] + [""]
    return lines


def _pct(value: Any) -> str:
    """A fraction as x100 with one decimal, or a dash."""
    return "–" if value is None or not _finite(value) else f"{100 * float(value):.1f}"


def _family_cell(value: Any) -> str:
    """A cgF1-family value as x100; n/a for the evaluator's -1 (undefined). cgF1 = pmF1 x IL_MCC may be negative."""
    return "n/a" if _finite(value) and float(value) <= -1 else _pct(value)


def _ap_cell(value: Any) -> str:
    """A COCOeval stat as x100, n/a for its -1."""
    return "n/a" if _finite(value) and float(value) < 0 else _pct(value)


def iou_type_label(metrics: Mapping[str, Any]) -> str:
    """The row label of the COCO AP table: its IoU type when the metrics name one."""
    return str(metrics.get("iou_type", "value"))


def _num(key: str, value: Any) -> str:
    """A count as an integer, a float with four decimals, anything else as text."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)) or (_finite(value) and COUNT_KEY.match(key) and float(value).is_integer()):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return _cell(str(value))


def _finite(value: Any) -> bool:
    """A real finite number."""
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value))


# --------------------------------------------------------------------------------------------- plot


def _thresholds(result: Any, curves: Mapping[str, Sequence[float]]) -> np.ndarray:
    """The IoU thresholds of the curves: the result's own, or 0.50:0.05:0.95."""
    own = getattr(result, "thresholds", None)
    own = getattr(result, "iou_thresholds", None) if own is None else own
    n = len(next(iter(curves.values()))) if curves else 10
    return np.asarray(own, dtype=np.float64) if own is not None else np.linspace(0.5, 0.95, n)


def write_plot(curves: Mapping[str, Sequence[float]], thresholds: np.ndarray, png: Path, title: str) -> Path:
    """Plot every curve (x100) against the IoU threshold and save it atomically as `png`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, values in curves.items():
        ax.plot(thresholds, 100 * np.asarray(values, dtype=np.float64), marker="o", label=name)
    lowest = min((100 * float(np.nanmin(v)) for v in curves.values() if len(v)), default=0.0)
    ax.set(xlabel="IoU threshold", ylabel="score (x100)", title=title, ylim=(min(0.0, lowest - 5), 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return atomic_write(png, lambda handle: fig.savefig(handle, format="png"))


def plot_section(png_name: str | None, curves: Mapping[str, Sequence[float]], thresholds: np.ndarray) -> list[str]:
    """Markdown lines: the plot link and the curve values."""
    if png_name is None:
        return []
    lines = ["## F1 versus IoU threshold", "", f"![F1 versus IoU threshold]({png_name})", ""]
    lines += ["| IoU | " + " | ".join(curves) + " |", "|---:" + "|---:" * len(curves) + "|"]
    for i, t in enumerate(thresholds):
        lines.append(f"| {t:.2f} | " + " | ".join(_pct(v[i]) for v in curves.values()) + " |")
    return lines + [""]


# --------------------------------------------------------------------------------------------- phrases


def phrase_rows(per_pair: Iterable[Any]) -> list[PhraseRow]:
    """Aggregate pair outcomes per phrase, worst phrase first; pairs with no outcome (not scored) are skipped."""
    rows: dict[str, PhraseRow] = {}
    for outcome in per_pair:
        il = _il(getattr(outcome, "il_outcome", None))
        if il is None:
            continue
        phrase = str(getattr(outcome, "phrase", ""))
        row = rows.setdefault(phrase, PhraseRow(phrase))
        num_gt = int(getattr(outcome, "num_gt", 0))
        row.pairs += 1
        row.positives += num_gt > 0
        row.gt_instances += num_gt
        row.predictions += int(getattr(outcome, "num_pred", 0))
        row.il[il] += 1
        if num_gt > 0:
            f1 = _local_f1(outcome)
            row.local_f1.append(np.zeros(10) if f1 is None else f1)
    return sorted(rows.values(), key=PhraseRow.sort_key)


def _il(value: Any) -> str | None:
    """The outcome "TP" / "FP" / "TN" / "FN" from an outcome written as such, as "IL_TP", or as an enum."""
    if value is None:
        return None
    text = str(getattr(value, "name", value)).upper().rsplit(".", 1)[-1].removeprefix("IL_")
    return text if text in IL_OUTCOMES else None


def _local_f1(outcome: Any) -> np.ndarray | None:
    """The pair's local F1 per threshold, whatever the attribute is called; None when it has none."""
    for name in LOCAL_F1_NAMES:
        value = getattr(outcome, name, None)
        if value is not None:
            return np.atleast_1d(np.asarray(value, dtype=np.float64))
    return None


def phrase_section(rows: Sequence[PhraseRow], max_phrases: int | None) -> list[str]:
    """Markdown lines: the per-phrase table, worst first, cut to `max_phrases` rows."""
    lines = ["## Per phrase, worst first", ""]
    if not rows:
        return lines + ["No scored pairs.", ""]
    lines += [
        (
            "F1: local F1 averaged over IoU 0.50:0.95 and over the phrase's positive pairs (a pair whose phrase is "
            "present but which has no prediction counts 0). IL: image-level outcome of each pair; IL FP = "
            "predictions on an image where the phrase is absent. Phrases without positives rank by 1 - FP rate."
        ),
        "",
        "| # | phrase | pairs | positive | GT inst. | pred. | IL TP | IL FP | IL TN | IL FN | F1 | F1@0.5 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shown = rows if max_phrases is None else rows[:max_phrases]
    for rank, r in enumerate(shown, start=1):
        il = " | ".join(str(r.il[k]) for k in IL_OUTCOMES)
        lines.append(
            f"| {rank} | {_cell(r.phrase)} | {r.pairs} | {r.positives} | {r.gt_instances} | {r.predictions} | "
            f"{il} | {_pct(r.f1)} | {_pct(r.f1_at_50)} |"
        )
    if len(shown) < len(rows):
        lines += ["", f"{len(rows) - len(shown)} better phrases not shown (of {len(rows)})."]
    return lines + [""]


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
