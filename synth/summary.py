"""Count each stage of a run (proposed, kept, rejected by which verifier) and report it as JSON and Markdown.

Nothing is lost silently: skipped source images, phrases the teacher never found and verifier answers that
matched no option are counted here, with examples.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sam3_model.atomic import atomic_write_text
from verifiers.base import UNPARSED

from .merge import MergeSettings, easy_negatives
from .ontology import Ontology

_EXAMPLES = 5


def summarize(records: list[dict[str, Any]], ontology: Ontology,
              merge: MergeSettings | None = None) -> dict[str, Any]:
    """Stage counts of a finished run, from every record of its verify shards (`merge`: the rules that build
    syn.json, so negatives the adversarial rule leaves out are counted as such)."""
    skipped = [r for r in records if "skipped" in r]
    images = [r for r in records if "skipped" not in r]
    found: Counter[str] = Counter()
    pairs = instances = candidates = via_parent = parent_asked = 0
    mv: dict[str, Counter] = defaultdict(Counter)
    ev: dict[str, Counter] = defaultdict(Counter)
    unparsed_examples: list[str] = []
    syn: Counter[str] = Counter()
    kept_instances = 0
    for record in images:
        easy = easy_negatives(record, ontology, merge) if merge is not None else {}
        for pair in record["pairs"]:
            pairs += 1
            instances += len(pair["instances"])
            candidates += len(pair["candidates"])
            found[pair["phrase"]] += len(pair["instances"])
            parent = ontology[pair["phrase"]].parent if pair["phrase"] in ontology else None
            parent_asked += parent is not None and parent in pair["prompts"]
            via_parent += sum(parent is not None and i["prompted_with"] == parent for i in pair["instances"])
            verification = pair.get("verification")
            if verification is None:
                continue
            for inst in verification["instances"]:
                kept_instances += inst["rejected_by"] is None
                for v in inst["verdicts"]:
                    _count(mv[v["verifier"]], v, unparsed_examples, record, pair)
            for v in verification["pair"]["verdicts"]:
                _count(ev[v["verifier"]], v, unparsed_examples, record, pair)
            status = _pair_status(pair, verification)
            syn["pairs_easy_negative" if status == "pairs_verified_negative" and pair["phrase"] in easy else status] += 1
    never_found = [p for p in ontology.phrases() if found[p] == 0]
    return {
        "generate": {"tasks": len(records), "images": len(images), "skipped": len(skipped),
                     "skipped_examples": [f"{r['key']}: {r['skipped']}" for r in skipped[:_EXAMPLES]]},
        "label": {"pairs": pairs, "instances": instances, "candidates": candidates,
                  "parent_prompted_pairs": parent_asked, "instances_via_parent": via_parent,
                  "instances_per_phrase": {p: found[p] for p in ontology.phrases()},
                  "phrases_never_found": never_found},
        "verify": {"mask": {k: dict(v) for k, v in mv.items()}, "exhaustivity": {k: dict(v) for k, v in ev.items()},
                   "unparsed_examples": unparsed_examples[:_EXAMPLES]},
        "syn": {"instances_kept": kept_instances, "instances_rejected": instances - kept_instances, **dict(syn)},
    }


def _pair_status(pair: dict[str, Any], verification: dict[str, Any]) -> str:
    kept = any(i["rejected_by"] is None for i in verification["instances"])
    if verification["pair"]["rejected_by"] is not None:
        return "pairs_rejected"
    return "pairs_positive" if kept else "pairs_verified_negative"


def _count(counter: Counter, verdict: dict[str, Any], examples: list[str], record: dict, pair: dict) -> None:
    counter["judged"] += 1
    counter["accepted" if verdict["option"] == "accept" else "rejected"] += 1
    if verdict["option"] == UNPARSED:
        counter["unparsed"] += 1
        examples.append(f"{record['key']} / {pair['phrase']}: {verdict['reason']}")


def _table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def write_summary(summary: dict[str, Any], out_dir: Path) -> Path:
    """Write summary.json and summary.md (tables a person reads) atomically; returns the md path."""
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    g, lab, ver, syn = summary["generate"], summary["label"], summary["verify"], summary["syn"]
    parts = ["# Data-engine run summary", "",
             "## Stages", "",
             _table([["generate", f"{g['tasks']} tasks", f"{g['images']} images", f"{g['skipped']} skipped"],
                     ["label", f"{lab['pairs']} image-phrase pairs", f"{lab['instances']} instances",
                      f"{lab['candidates']} candidates; {lab['instances_via_parent']} instances via a parent prompt"],
                     ["verify", f"{lab['instances']} instances, {lab['pairs']} pairs",
                      f"{syn['instances_kept']} instances, "
                      f"{syn.get('pairs_positive', 0) + syn.get('pairs_verified_negative', 0)} pairs",
                      f"{syn.get('pairs_positive', 0)} positive and {syn.get('pairs_verified_negative', 0)} verified "
                      f"negative pairs kept; {syn.get('pairs_rejected', 0)} pairs rejected"
                      + (f"; {syn['pairs_easy_negative']} easy negatives left out (adversarial rule)"
                         if syn.get("pairs_easy_negative") else "")]],
                    ["stage", "in", "out", "notes"]), ""]
    for kind in ("mask", "exhaustivity"):
        rows = [[name, c.get("judged", 0), c.get("accepted", 0), c.get("rejected", 0), c.get("unparsed", 0)]
                for name, c in ver[kind].items()]
        if rows:
            parts += [f"## {kind.capitalize()} verifiers", "",
                      _table(rows, ["verifier", "judged", "accepted", "rejected", "unparsed answers"]), ""]
    parts += ["## Instances per phrase (teacher)", "",
              _table([[p, n] for p, n in lab["instances_per_phrase"].items()], ["phrase", "instances"]), ""]
    if lab["phrases_never_found"]:
        parts += [f"The teacher never found: {', '.join(lab['phrases_never_found'])}. Consider a parent concept "
                  "it knows (`parent:` in the ontology) or a lower `teacher.threshold`.", ""]
    if g["skipped_examples"]:
        parts += ["Skipped images (first few):", "", *[f"- {e}" for e in g["skipped_examples"]], ""]
    if ver["unparsed_examples"]:
        parts += ["Verifier answers that matched no option (first few):", "",
                  *[f"- {e}" for e in ver["unparsed_examples"]], ""]
    if summary.get("contact"):
        contact = summary["contact"]
        parts += ["## Contact sheets", "",
                  f"[{contact['index']}]({contact['index']}): per phrase, crops of the accepted and rejected "
                  "instances, each captioned with the verifier and reason that decided it.", "",
                  *[f"- [{p}]({path})" for p, path in contact["sheets"].items()], ""]
    return atomic_write_text(out_dir / "summary.md", "\n".join(parts))
