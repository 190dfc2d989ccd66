"""A recipe's results: results.csv (one row per run), results.md (per arm, mix, round and size: domain cgF1 and its
gain over zero-shot beside general cgF1 and its change, each with a 95% bootstrap interval over the test images;
which differences are signal), scaling.png (cgF1 against training images) and tradeoff.png (domain against general
cgF1, one point per run)."""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam3_model.atomic import atomic_write, atomic_write_text

from .evidence import RESAMPLES, Estimate, Evidence, cell
from .jobs import COLUMNS, GENERAL_TEST_SET, TEST_SET

SCORES = ("cgF1", "pmF1", "IL_MCC", "AP")
REPORT_COLUMNS = ("cgF1_low", "cgF1_high", "general_change", "general_cgF1_low", "general_cgF1_high", "hn_IL_MCC",
                  "hn_FPR")  # added to results.csv at report time, from every run's pair tables


def arm_label(row: dict[str, Any]) -> str:
    """"syn", "syn + general 1:1", "syn (round 2)": the arm with its mix and data-engine round."""
    label = row["arm"] if row.get("mix", "none") == "none" else f"{row['arm']} + {row['mix']} 1:1"
    round_ = int(row.get("round") or 1)
    return label if round_ == 1 else f"{label} (round {round_})"


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """results.csv: the COLUMNS of every row, in run order; False when the file already says exactly that."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *REPORT_COLUMNS], extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if Path(path).is_file() and Path(path).read_text() == buffer.getvalue():
        return False
    atomic_write_text(path, buffer.getvalue())
    return True


@dataclass
class Group:
    """The runs of one arm, mix and data size (one per seed)."""

    arm: str
    mix: str
    train_images: int
    rows: list[dict[str, Any]]
    round: int = 1

    def mean(self, key: str) -> float:
        """Mean over seeds."""
        return sum(float(r[key]) for r in self.rows) / len(self.rows)

    def spread(self, key: str) -> float:
        """Sample standard deviation over seeds (0 with one seed)."""
        if len(self.rows) < 2:
            return 0.0
        m = self.mean(key)
        return math.sqrt(sum((float(r[key]) - m) ** 2 for r in self.rows) / (len(self.rows) - 1))

    @property
    def label(self) -> str:
        return arm_label({"arm": self.arm, "mix": self.mix, "round": self.round})

    @property
    def runs(self) -> list[str]:
        """The run folders of the group (one per seed)."""
        return [str(r["run"]) for r in self.rows]

    def has(self, key: str) -> bool:
        """Whether every run reports `key` (a general score needs a general test set)."""
        return all(r.get(key) not in (None, "") for r in self.rows)


def group_rows(rows: Sequence[dict[str, Any]]) -> list[Group]:
    """Rows grouped by (arm, mix, round, requested size), in first-appearance order."""
    groups: dict[tuple[str, str, int, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        size = int(row.get("requested_images", row["train_images"]))
        groups[(row["arm"], row.get("mix", "none"), int(row.get("round") or 1), size)].append(row)
    out = []
    for (arm, mix, round_, _size), members in groups.items():
        images = round(sum(int(r["train_images"]) for r in members) / len(members))
        out.append(Group(arm, mix, images, members, round_))
    return out


def best_group(groups: Sequence[Group]) -> Group | None:
    """The trained group with the highest mean cgF1 (ties: more seeds, then fewer images)."""
    trained = [g for g in groups if g.arm != "zero-shot"]
    return max(trained, key=lambda g: (g.mean("cgF1"), len(g.rows), -g.train_images), default=None)


def add_report_columns(rows: Sequence[dict[str, Any]], evidence: Evidence | None) -> None:
    """Fill each row's REPORT_COLUMNS: interval ends, the general change against zero-shot, hard-negative IL_MCC."""
    zero = next((r for r in rows if r["arm"] == "zero-shot"), None)
    for row in rows:
        if zero is not None and row.get("general_cgF1") not in (None, "") and zero.get("general_cgF1") not in (None, ""):
            row["general_change"] = round(float(row["general_cgF1"]) - float(zero["general_cgF1"]), 4)
        if evidence is None:
            continue
        for key, test_set in (("cgF1", TEST_SET), ("general_cgF1", GENERAL_TEST_SET)):
            estimate = evidence.estimate([row["run"]], test_set, "cgF1")
            if estimate is not None:
                row[f"{key}_low"], row[f"{key}_high"] = (round(v, 4) for v in estimate.interval())
        for key, metric in (("hn_IL_MCC", "IL_MCC"), ("hn_FPR", "IL_FPR")):
            estimate = evidence.estimate([row["run"]], TEST_SET, metric, evidence.hard_negatives)
            if estimate is not None:
                row[key] = round(estimate.value, 4)


def results_markdown(rows: Sequence[dict[str, Any]], title: str, notes: Sequence[str] = (),
                     evidence: Evidence | None = None) -> str:
    """results.md: per arm, mix, round and size the domain and general scores with their intervals, the gain and
    the change against zero-shot, the domain details, and which differences are signal."""
    groups = group_rows(rows)
    zero = next((g for g in groups if g.arm == "zero-shot"), None)
    general = any(g.has("general_cgF1") for g in groups)

    def est(g: Group | None, test_set: str = TEST_SET, metric: str = "cgF1", pairs: Any = None) -> Estimate | None:
        return None if g is None or evidence is None else evidence.estimate(g.runs, test_set, metric, pairs)

    def diff(a: Group, b: Group | None, test_set: str = TEST_SET) -> Estimate | None:
        first, second = est(a, test_set), est(b, test_set)
        return first - second if first is not None and second is not None else None

    lines = [f"# {title}", "", _intro(groups, evidence is not None, general), ""]
    head = "| arm | train images | seeds | domain cgF1 | gain over zero-shot |"
    rule = "|---|---:|---:|---:|---:|"
    if general:
        head, rule = head + " general cgF1 | change on general |", rule + "---:|---:|"
    lines += [head, rule]
    for g in groups:
        row = (f"| {g.label} | {g.train_images} | {len(g.rows)} | {cell(est(g), g.mean('cgF1'))} | "
               + ("" if zero is None or g is zero else cell(diff(g, zero), g.mean("cgF1") - zero.mean("cgF1"), True))
               + " |")
        if general:
            general_value = g.mean("general_cgF1") if g.has("general_cgF1") else None
            change = None if zero is None or g is zero or general_value is None or not zero.has("general_cgF1") \
                else general_value - zero.mean("general_cgF1")
            row += (f" {cell(est(g, GENERAL_TEST_SET), general_value)} | "
                    + ("" if change is None else cell(diff(g, zero, GENERAL_TEST_SET), change, True)) + " |")
        lines.append(row)
    lines += ["", "Domain details (held-out HQ test): pmF1 and IL_MCC over every pair; *hard negatives*: IL_MCC and "
              "the false-positive rate over the positive pairs and the negatives confusable with a concept in the "
              "same image (its siblings, its listed hard negatives), where a model that fires on every related "
              "phrase shows; AP is COCO mask AP (no interval: COCOeval per resample is too slow).", "",
              "| arm | train images | pmF1 | IL_MCC | hard-negative IL_MCC | hard-negative FPR | AP |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    hard = evidence.hard_negatives if evidence is not None else None
    for g in groups:
        lines.append(f"| {g.label} | {g.train_images} | {cell(est(g, metric='pmF1'), g.mean('pmF1'))} | "
                     f"{cell(est(g, metric='IL_MCC'), g.mean('IL_MCC'))} | "
                     f"{cell(est(g, metric='IL_MCC', pairs=hard))} | {cell(est(g, metric='IL_FPR', pairs=hard))} | "
                     f"{g.mean('AP'):.3f} |")
    signal = _signal(groups, zero, diff, general)
    if signal:
        lines += ["", "## Which differences are signal", "",
                  "Paired bootstrap over the test images (the same resampled images for both sides); a difference "
                  "whose 95% interval holds 0 cannot be told from noise on this test set.", "", *signal]
    best = best_group(groups)
    if best is not None:
        base = zero.mean("cgF1") if zero else None
        lines += ["", f"Best: **{best.label}** with {best.train_images} images, cgF1 {best.mean('cgF1'):.3f}"
                  + (f" ({best.mean('cgF1') - base:+.3f} over zero-shot)." if base is not None else ".")]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    lines += ["", "![cgF1 against training images](scaling.png)", ""]
    if general:
        lines += ["![domain cgF1 against general cgF1](tradeoff.png)", ""]
    return "\n".join(lines)


def _intro(groups: Sequence[Group], intervals: bool, general: bool) -> str:
    seeds = max((len(g.rows) for g in groups), default=1)
    text = ("Every model is scored on the same held-out HQ test set (domain)"
            + (" and on a held-out general test set of concepts the base model knew (general: what adapting cost)"
               if general else "; the recipe has no general test set, so what adapting cost is not measured") + ". "
            "cgF1 = pmF1 x IL_MCC (predictions scoring at least the recipe's threshold, masks matched at IoU "
            "0.50:0.95, averaged).")
    if intervals:
        text += (f" Brackets: 95% bootstrap interval over the test images ({RESAMPLES} resamples)"
                 + (", the metric averaged over seeds in each resample" if seeds > 1 else "") + ".")
    elif seeds > 1:
        text += " Values are means over seeds."
    return text



def _signal(groups: Sequence[Group], zero: Group | None, diff: Any, general: bool) -> list[str]:
    """One line per comparison a reader asks about: each arm against zero-shot (domain and general), syn
    against pl, hq against syn, syn+hq against hq, gen against syn, and a later round against round 1."""
    by_key = {(g.arm, g.mix, g.round, g.train_images): g for g in groups}
    pairs: list[tuple[Group, Group, str]] = []
    for g in groups:
        if g.arm == "zero-shot":
            continue
        if zero is not None:
            pairs.append((g, zero, TEST_SET))
            if general and g.has("general_cgF1") and zero.has("general_cgF1"):
                pairs.append((g, zero, GENERAL_TEST_SET))
        rival = {"syn": "pl", "hq": "syn", "syn+hq": "hq", "gen": "syn"}.get(g.arm)
        other = by_key.get((rival, g.mix, g.round, g.train_images)) if rival else None
        if other is None and rival and g.round > 1:
            other = by_key.get((rival, g.mix, 1, g.train_images))
        if other is not None:
            pairs.append((g, other, TEST_SET))
        if g.round > 1 and (g.arm, g.mix, 1, g.train_images) in by_key:
            pairs.append((g, by_key[(g.arm, g.mix, 1, g.train_images)], TEST_SET))
    lines = []
    for a, b, test_set in pairs:
        d = diff(a, b, test_set)
        if d is None:
            continue
        where = "domain" if test_set == TEST_SET else "general"
        verdict = "0 inside the interval: not distinguishable from noise" if d.holds_zero() else "signal"
        lines.append(f"- {where} cgF1, {a.label} - {b.label} at {a.train_images} images: {cell(d, signed=True)}: "
                     f"{verdict}.")
    return lines


def scaling_plot(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str) -> None:
    """scaling.png: mean cgF1 (error bars: spread over seeds) against training images, one line per arm and mix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_rows(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    lines: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        if g.arm != "zero-shot":
            lines[g.label].append(g)
    for label, members in lines.items():
        members.sort(key=lambda g: g.train_images)
        style = "--" if " + " in label else "-"
        ax.errorbar([g.train_images for g in members], [g.mean("cgF1") for g in members],
                    yerr=[g.spread("cgF1") for g in members], marker="o", linestyle=style, capsize=3, label=label)
    zero = next((g for g in groups if g.arm == "zero-shot"), None)
    if zero is not None:
        ax.axhline(zero.mean("cgF1"), color="grey", linestyle=":", label="zero-shot")
    sizes = sorted({g.train_images for g in groups if g.arm != "zero-shot"})
    if len(sizes) > 1 and sizes[0] > 0 and sizes[-1] / sizes[0] >= 8:
        ax.set_xscale("log")
    ax.set_xlabel("domain training images")
    ax.set_ylabel("cgF1 (held-out HQ test)")
    _finish(fig, ax, title, path)


def _finish(fig: Any, ax: Any, title: str, path: str | os.PathLike[str]) -> None:
    """Title, grid and legend; the PNG written atomically; the figure closed."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(Path(path), lambda handle: fig.savefig(handle, format="png"))
    plt.close(fig)


def tradeoff_plot(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str) -> None:
    """tradeoff.png: domain cgF1 against general cgF1, one point per run (colour: arm, size: training images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    kept = [r for r in rows if r.get("general_cgF1") not in (None, "")]
    labels = list(dict.fromkeys(arm_label(r) for r in kept))
    most = max((int(r["train_images"]) for r in kept), default=1) or 1
    for i, label in enumerate(labels):
        members = [r for r in kept if arm_label(r) == label]
        marker = "*" if members[0]["arm"] == "zero-shot" else ("s" if " + " in label else "o")
        ax.scatter([float(r["cgF1"]) for r in members], [float(r["general_cgF1"]) for r in members],
                   s=[40 + 120 * int(r["train_images"]) / most for r in members], marker=marker,
                   color=f"C{i}", alpha=0.8, label=label)
    zero = next((r for r in kept if r["arm"] == "zero-shot"), None)
    if zero is not None:
        ax.axhline(float(zero["general_cgF1"]), color="grey", linestyle=":", linewidth=1)
        ax.axvline(float(zero["cgF1"]), color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("domain cgF1 (held-out HQ test)")
    ax.set_ylabel("general cgF1 (held-out general test)")
    _finish(fig, ax, title, path)
