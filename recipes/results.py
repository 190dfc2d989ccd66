"""A recipe's results: results.csv (one row per run), results.md (mean and spread over seeds, gain over zero-shot)
and scaling.png (cgF1 against training images, one line per arm and mix, zero-shot as a dashed line)."""

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

from .jobs import COLUMNS

SCORES = ("cgF1", "pmF1", "IL_MCC", "AP")


def arm_label(row: dict[str, Any]) -> str:
    """"syn" or "syn + general 1:1": the arm with its mix."""
    return row["arm"] if row.get("mix", "none") == "none" else f"{row['arm']} + {row['mix']} 1:1"


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """results.csv: the COLUMNS of every row, in run order; False when the file already says exactly that."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
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
        return arm_label({"arm": self.arm, "mix": self.mix})


def group_rows(rows: Sequence[dict[str, Any]]) -> list[Group]:
    """Rows grouped by (arm, mix, requested size), in first-appearance order."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        size = int(row.get("requested_images", row["train_images"]))
        groups[(row["arm"], row.get("mix", "none"), size)].append(row)
    out = []
    for (arm, mix, _size), members in groups.items():
        images = round(sum(int(r["train_images"]) for r in members) / len(members))
        out.append(Group(arm, mix, images, members))
    return out


def best_group(groups: Sequence[Group]) -> Group | None:
    """The trained group with the highest mean cgF1 (ties: more seeds, then fewer images)."""
    trained = [g for g in groups if g.arm != "zero-shot"]
    return max(trained, key=lambda g: (g.mean("cgF1"), len(g.rows), -g.train_images), default=None)


def results_markdown(rows: Sequence[dict[str, Any]], title: str, notes: Sequence[str] = ()) -> str:
    """results.md: one table row per arm, mix and size with mean ± spread over seeds and the gain over zero-shot."""
    groups = group_rows(rows)
    zero = next((g for g in groups if g.arm == "zero-shot"), None)
    base = zero.mean("cgF1") if zero else None
    lines = [f"# {title}", "", "Every model is evaluated on the same held-out HQ test set. Scores are mean ± standard "
             "deviation over seeds; cgF1 = pmF1 x IL_MCC (predictions scoring at least the recipe's "
             "threshold, masks matched at IoU 0.50:0.95, averaged); AP is COCO mask AP.", ""]
    lines += ["| arm | train images | seeds | cgF1 | gain over zero-shot | pmF1 | IL_MCC | AP |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for g in groups:
        cells = [f"{g.mean(k):.3f} ± {g.spread(k):.3f}" if len(g.rows) > 1 else f"{g.mean(k):.3f}" for k in SCORES]
        gain = "" if base is None or g.arm == "zero-shot" else f"{g.mean('cgF1') - base:+.3f}"
        lines.append(f"| {g.label} | {g.train_images} | {len(g.rows)} | {cells[0]} | {gain} | {cells[1]} | "
                     f"{cells[2]} | {cells[3]} |")
    best = best_group(groups)
    if best is not None:
        lines += ["", f"Best: **{best.label}** with {best.train_images} images, cgF1 {best.mean('cgF1'):.3f}"
                  + (f" ({best.mean('cgF1') - base:+.3f} over zero-shot)." if base is not None else ".")]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    lines += ["", "![cgF1 against training images](scaling.png)", ""]
    return "\n".join(lines)


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
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write(Path(path), lambda f: f.write(buffer.getvalue()))
