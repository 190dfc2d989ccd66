"""Contact sheets of a data-engine run: one PNG per phrase (accepted and rejected crops, captioned with the verifier
that decided), an HTML page linking them all, and summary.md linking the page."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synth.contact import (ACCEPT_COLOUR, REJECT_COLOUR, choose, phrase_slugs, proposed_instances, read_decisions,
                           sheet_sections)
from synth.engine import SynthRun
from verifiers.base import Verdict, VerifyItem
from verifiers.compose import VerifierChain

from synth_helpers import toy_config

PHRASES = ["striped red square", "blue circle", "blue triangle"]
DROPPED_IMAGE = "toy-000001"  # the exhaustivity verifier below drops every pair of this image


class Parity:
    """Rejects every instance whose score has an odd sixth decimal (a fixed, arbitrary half)."""

    name = "parity"

    def verify_masks(self, items: Sequence[VerifyItem]) -> list[list[Verdict]]:
        return [[Verdict(self.name, "reject", 1.0, 0.0, "odd score") if int(i.score * 1e6) % 2 else
                 Verdict(self.name, "accept", 1.0, 1.0, "even score") for i in item.instances] for item in items]


class Approver:
    """Accepts every instance it sees (so accepted captions name the last verifier, this one)."""

    name = "approver"

    def verify_masks(self, items: Sequence[VerifyItem]) -> list[list[Verdict]]:
        return [[Verdict(self.name, "accept", 0.9, 0.9, "looks fine") for _ in item.instances] for item in items]


class DropOneImage:
    """Rejects every pair of DROPPED_IMAGE as non-exhaustive."""

    name = "dropper"

    def verify_exhaustivity(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        return [Verdict(self.name, "reject", 1.0, 0.0, "missed some") if item.key.startswith(DROPPED_IMAGE) else
                Verdict(self.name, "accept", 1.0, 1.0, "complete") for item in items]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SynthRun:
    """6 toy images labelled by the tiny teacher at a low threshold, judged by the chain above."""
    tmp = tmp_path_factory.mktemp("contact")
    config = toy_config(tmp, teacher={"threshold": 0.1, "candidate_threshold": 0.05})
    chain = VerifierChain([Parity(), Approver()], [DropOneImage()])
    synth_run = SynthRun(config, tmp / "out", chain=chain)
    synth_run.run()
    return synth_run


def _instances(run: SynthRun) -> dict:
    records = [r for s in range(run.num_shards) for r in run.run_dir.read_shard("verify", s)]
    return proposed_instances(records, read_decisions(run.run_dir.root / "decisions.jsonl"))


def _bands(path: Path, colour: tuple[int, int, int]) -> np.ndarray:
    """Rows of the PNG mostly of `colour` (a section's header band)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)  # (H, W, 3)
    return np.flatnonzero((pixels == colour).all(-1).mean(1) > 0.8)


def test_one_sheet_per_phrase_with_accepted_then_rejected_sections(run: SynthRun) -> None:
    folder = run.run_dir.root / "contact"
    slugs = phrase_slugs(PHRASES)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(f"{s}.png" for s in slugs.values()), "index.html"])
    instances = _instances(run)
    both = [p for p in PHRASES if {s.accepted for s in instances.get(p, [])} == {True, False}]
    assert both, "the fixture should accept some instances of a phrase and reject others"
    for phrase in both:
        accepted, rejected = _bands(folder / f"{slugs[phrase]}.png", ACCEPT_COLOUR), \
            _bands(folder / f"{slugs[phrase]}.png", REJECT_COLOUR)
        assert len(accepted) and len(rejected) and accepted.max() < rejected.min()  # two sections, accepted first
        shown_accepted, shown_rejected = sheet_sections(instances[phrase])
        assert shown_accepted and shown_rejected


def test_captions_name_the_verifier_that_decided(run: SynthRun) -> None:
    by_phrase = _instances(run)
    instances = [s for items in by_phrase.values() for s in items]
    decisions = read_decisions(run.run_dir.root / "decisions.jsonl")
    syn_kept = sum(d["instances_kept"] for d in decisions.values() if d["syn"] != "dropped")
    assert sum(s.accepted for s in instances) == syn_kept  # accepted = in syn.json
    for s in instances:
        if s.accepted:
            assert s.caption == "approver: looks fine"  # the last verifier that judged it
        elif s.key == DROPPED_IMAGE and s.caption.startswith("dropper"):
            assert s.caption == "dropper: pair dropped: missed some"
        else:
            assert s.caption == "parity: odd score"  # the first (here only) verifier that rejected it
    assert any(s.caption.startswith("dropper") for s in instances)
    for items in by_phrase.values():
        accepted, rejected = sheet_sections(items, cap=5)
        assert len(accepted) <= 5 and len(rejected) <= 5 and all(s.accepted for s in accepted)
        assert not any(s.accepted for s in rejected)


def test_index_links_every_sheet_and_summary_links_the_index(run: SynthRun) -> None:
    root = run.run_dir.root
    page = (root / "contact/index.html").read_text()
    for slug in phrase_slugs(PHRASES).values():
        assert f'href="{slug}.png"' in page and f'src="{slug}.png"' in page  # relative links, beside the page
    for phrase in PHRASES:
        assert f">{phrase}<" in page
    summary = (root / "summary.md").read_text()
    assert "(contact/index.html)" in summary
    assert all(f"(contact/{slug}.png)" in summary for slug in phrase_slugs(PHRASES).values())
    assert not [p for p in (root / "contact").iterdir() if p.name.startswith(".")]  # no temp file left


def test_choice_is_capped_even_and_deterministic() -> None:
    items = list(range(100))
    chosen = choose(items, 24)
    assert len(chosen) == 24 == len(set(chosen)) and chosen[0] == 0 and chosen[-1] == 99
    assert chosen == sorted(chosen) == choose(items, 24)
    assert max(np.diff(chosen)) - min(np.diff(chosen)) <= 1  # evenly spread over the run
    assert choose(items[:7], 24) == items[:7]


def test_slugs_are_file_safe_and_unique() -> None:
    slugs = phrase_slugs(["Red square", "red  square!", "index", "日本"])
    assert slugs == {"Red square": "red-square", "red  square!": "red-square-2", "index": "index-2", "日本": "phrase"}
    assert all(re.fullmatch(r"[a-z0-9-]+", s) for s in slugs.values())
