"""The data engine end to end on the toy domain with the tiny teacher: datasets, provenance, resumption."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from adapt.data.readers import read_dataset
from sam3_model.errors import ConfigError
from synth.engine import SynthRun
from synth.stages import LabelStage
from verifiers.base import Verdict, VerifyItem
from verifiers.compose import VerifierChain

from synth_helpers import toy_config

OUTPUTS = ("pl.json", "syn.json", "exact.json", "decisions.jsonl", "summary.json")


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One complete run (6 toy images, 3 shards)."""
    out = tmp_path_factory.mktemp("run") / "out"
    SynthRun(toy_config(out.parent), out).run()
    return out


def test_run_writes_datasets_the_readers_read(finished: Path) -> None:
    pl, syn, exact = (read_dataset(finished / f"{v}.json") for v in ("pl", "syn", "exact"))
    assert not pl.problems and not syn.problems and not exact.problems
    assert len(pl.samples) == 6 and len(exact.samples) == 6  # every image, every phrase
    assert all([p.phrase for p in s.phrases] == ["striped red square", "blue circle", "blue triangle"]
               for s in pl.samples)
    assert sum(p.num_instances for s in pl.samples for p in s.phrases) > 0
    # exact labels are the renderer's: the toy provenance lists the objects, each matching object is an instance
    data = _load(finished / "exact.json")
    assert all(a["provenance"]["source"]["kind"] == "toy" for a in data["annotations"])


def test_every_annotation_has_complete_provenance_and_every_pair_a_decision(finished: Path) -> None:
    pl, syn = _load(finished / "pl.json"), _load(finished / "syn.json")
    for ann in pl["annotations"] + syn["annotations"]:
        prov = ann["provenance"]
        assert prov["source"]["kind"] == "toy" and prov["source"]["seed"] == 0 and "index" in prov["source"]
        assert prov["teacher"]["checkpoint"] == "tiny" and prov["teacher"]["score"] == ann["score"]
        assert prov["teacher"]["prompt"] in ("striped red square", "red square", "blue circle", "blue triangle")
    for ann in syn["annotations"]:  # kept: the geometric verifier's accept is recorded with its score and reason
        assert [v["verifier"] for v in ann["provenance"]["verifiers"]] == ["geometric"]
        assert all(v["option"] == "accept" and v["reason"] for v in ann["provenance"]["verifiers"])
    for pair in pl["images"] + syn["images"]:
        assert pair["decision"]["status"] in ("positive", "negative", "positive_non_exhaustive")
        assert pair["decision"]["by"] and pair["decision"]["reason"]
    lines = [json.loads(line) for line in (finished / "decisions.jsonl").read_text().splitlines()]
    assert len(lines) == 6 * 3  # every pair, dropped ones included
    dropped = [d for d in lines if d["syn"] == "dropped"]
    assert all(d["by"] == "teacher_confidence" for d in dropped)
    assert len(syn["images"]) == len(lines) - len(dropped)


def test_summary_counts_each_stage(finished: Path) -> None:
    summary = _load(finished / "summary.json")
    lines = [json.loads(line) for line in (finished / "decisions.jsonl").read_text().splitlines()]
    assert summary["generate"] == {"tasks": 6, "images": 6, "skipped": 0, "skipped_examples": []}
    assert summary["label"]["pairs"] == 18
    assert summary["label"]["instances"] == sum(d["instances_proposed"] for d in lines)
    assert summary["syn"]["instances_kept"] == sum(d["instances_kept"] for d in lines)
    geometric = summary["verify"]["mask"].get("geometric", {"judged": 0})
    assert geometric["judged"] == summary["label"]["instances"]
    assert summary["verify"]["exhaustivity"]["teacher_confidence"]["judged"] == 18
    assert "| generate | 6 tasks | 6 images | 0 skipped |" in (finished / "summary.md").read_text()


class RejectEveryOther:
    """A mask verifier forced to reject every second instance it sees (in a fixed order)."""

    name = "every_other"

    def verify_masks(self, items: Sequence[VerifyItem]) -> list[list[Verdict]]:
        out = []
        for item in items:
            verdicts = []
            for inst in item.instances:
                reject = int(inst.score * 1e6) % 2 == 1
                verdicts.append(Verdict(self.name, "reject" if reject else "accept", 1.0, 0.0 if reject else 1.0,
                                        "forced"))
            out.append(verdicts)
        return out


def _instances(data: dict) -> list[tuple]:
    pairs = {p["id"]: p for p in data["images"]}
    return sorted((pairs[a["image_id"]]["file_name"], pairs[a["image_id"]]["text_input"], a["segmentation"]["counts"])
                  for a in data["annotations"])


def test_a_verifier_forced_to_reject_drops_exactly_those_annotations(tmp_path: Path) -> None:
    config = toy_config(tmp_path, teacher={"threshold": 0.1, "candidate_threshold": 0.05})
    SynthRun(config, tmp_path / "out", chain=VerifierChain([RejectEveryOther()])).run()
    pl, syn = _load(tmp_path / "out/pl.json"), _load(tmp_path / "out/syn.json")
    rejected = [a for a in pl["annotations"] if int(a["score"] * 1e6) % 2 == 1]
    assert rejected and len(rejected) < len(pl["annotations"])
    pairs = {p["id"]: p for p in pl["images"]}
    expected = sorted(set(_instances(pl)) - {(pairs[a["image_id"]]["file_name"], pairs[a["image_id"]]["text_input"],
                                              a["segmentation"]["counts"]) for a in rejected})
    assert _instances(syn) == expected
    assert len(syn["images"]) == len(pl["images"])  # no exhaustivity verifier: no pair dropped


def test_parent_prompt_is_asked_when_the_concept_is_not_found(tmp_path: Path) -> None:
    config = toy_config(tmp_path, num_images=2, teacher={"threshold": 0.99, "candidate_threshold": 0.99})
    run = SynthRun(config, tmp_path / "out")
    run.run()
    pairs = [p for r in run.run_dir.read_shard("label", 0) for p in r["pairs"]]
    fine = [p for p in pairs if p["phrase"] == "striped red square"]
    assert fine and all(p["prompts"] == ["striped red square", "red square"] for p in fine)
    assert all(p["prompts"] == [p["phrase"]] for p in pairs if p["phrase"] != "striped red square")
    summary = _load(tmp_path / "out/summary.json")
    assert summary["label"]["parent_prompted_pairs"] == 2
    assert summary["label"]["phrases_never_found"] == ["striped red square", "blue circle", "blue triangle"]
    assert "The teacher never found" in (tmp_path / "out/summary.md").read_text()


def test_an_interrupted_run_resumed_equals_an_uninterrupted_one(tmp_path: Path, monkeypatch, finished: Path) -> None:
    calls = {"n": 0}
    original = LabelStage.process

    def crash_on_second_shard(self, records):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return original(self, records)

    out = tmp_path / "out"
    monkeypatch.setattr(LabelStage, "process", crash_on_second_shard)
    with pytest.raises(RuntimeError, match="simulated crash"):
        SynthRun(toy_config(tmp_path), out).run()
    assert [p.name for p in sorted((out / "stages/label").glob("shard-*"))] == ["shard-00000.json"]
    assert not list((out / "stages/label").glob(".*tmp"))  # nothing half-written
    monkeypatch.setattr(LabelStage, "process", original)
    run = SynthRun(toy_config(tmp_path), out)
    assert run.generate() == 0  # finished shards are skipped
    assert run.label() == 2  # only the two missing shards
    run.verify()
    run.merge()
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (finished / name).read_bytes(), name


def test_resuming_with_a_different_config_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = SynthRun(toy_config(tmp_path, num_images=2), out)
    run.generate()
    run.label()
    changed = SynthRun(toy_config(tmp_path, num_images=2, teacher={"threshold": 0.3}), out)
    with pytest.raises(ConfigError, match="different configuration"):
        changed.label()
    with pytest.raises(ConfigError, match="different source config"):
        SynthRun(toy_config(tmp_path, num_images=3), out).generate()


def test_a_stage_before_its_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="synth generate"):
        SynthRun(toy_config(tmp_path), tmp_path / "out").label()


def test_two_ranks_write_the_same_dataset_as_one(tmp_path: Path, finished: Path) -> None:
    """Lightning prediction over shards with 2 spawned CPU ranks (DDP): every rank writes its own shards."""
    config = toy_config(tmp_path, shard_size=3,
                        run={"devices": 2, "strategy": "ddp_spawn", "shard_size": 3, "progress": False,
                             "accelerator": "cpu"})
    SynthRun(config, tmp_path / "out").run()
    for name in OUTPUTS:
        assert (tmp_path / "out" / name).read_bytes() == (finished / name).read_bytes(), name
