"""Ontology files, typed config loading, and the teacher's parent-concept prompting (a scripted teacher)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_model.configs import parse_dataclass
from sam3_model.errors import ConfigError
from sam3_model.records import ConceptPrompt, ConceptResult, Instance, encode_mask
from synth.config import TeacherConfig
from synth.labelling import PseudoLabeller
from synth.ontology import load_ontology, ontology_from_mapping


def test_ontology_siblings_and_hard_negatives(tmp_path: Path) -> None:
    path = tmp_path / "food.yaml"
    path.write_text("concepts:\n  - {name: sushi roll, parent: sushi, hard_negatives: [onigiri]}\n"
                    "  - {name: nigiri, parent: sushi, synonyms: [nigirizushi]}\n  - ramen\n")
    onto = load_ontology(path)
    assert onto.names == ["sushi roll", "nigiri", "ramen"]
    assert onto.phrases() == ["sushi roll", "nigiri", "ramen", "onigiri"]
    assert onto.negatives_of("sushi roll") == ["onigiri", "nigiri"]
    assert onto.negatives_of("nigiri") == ["sushi roll"] and onto.negatives_of("ramen") == []
    assert onto.confusable_with("onigiri") == ["sushi roll"]
    assert onto["nigiri"].synonyms == ("nigirizushi",)


@pytest.mark.parametrize("data, message", [
    ({"concepts": []}, "no concepts"),
    ({"concept": ["a"]}, "'concepts:' list"),
    ({"concepts": [{"name": "a"}, {"name": "a"}]}, "listed twice"),
    ({"concepts": [{"name": "a", "colour": "red"}]}, r"concepts\[0\]: unknown key"),
    ({"concepts": [{"name": "  "}]}, r"concepts\[0\].name: expected a non-empty noun phrase"),
    ({"concepts": [{"name": "a", "hard_negatives": [3]}]}, r"hard_negatives\[0\]"),
])
def test_bad_ontologies_name_the_entry(data, message) -> None:
    with pytest.raises(ConfigError, match=message):
        ontology_from_mapping(data, "onto.yaml")


@dataclass
class _Inner:
    size: int = 3
    ratio: float = 0.5


@dataclass
class _Outer:
    name: str
    inner: _Inner | None = None
    sizes: tuple[int, int] = (1, 2)
    tags: list[str] = field(default_factory=list)


def test_config_loading_is_typed_and_names_the_key() -> None:
    cfg = parse_dataclass(_Outer, {"name": "x", "inner": {"ratio": 1}, "sizes": [3, 4]}, "c.yaml")
    assert cfg == _Outer("x", _Inner(3, 1.0), (3, 4), [])
    for data, message in [({"name": "x", "inner": {"sise": 1}}, "c.yaml: unknown key 'inner.sise'; did you mean "
                                                                 "'inner.size'?"),
                          ({"name": "x", "inner": {"size": "big"}}, "c.yaml: inner.size: expected an integer"),
                          ({"name": "x", "sizes": [1]}, "c.yaml: sizes: expected tuple with 2 elements"),
                          ({}, "c.yaml: name: missing")]:
        with pytest.raises(ConfigError) as err:
            parse_dataclass(_Outer, data, "c.yaml")
        assert str(err.value).startswith(message)


class ScriptedTeacher:
    """A stand-in `ConceptSegmenter`: fixed answers per prompt, and a log of what was asked."""

    def __init__(self, answers: dict[str, list[float]]) -> None:
        self.answers, self.asked, self.threshold = answers, [], 0.0

    def __call__(self, images, prompts):
        self.asked.append(list(prompts))
        out = []
        for k, prompt in enumerate(prompts):
            instances = []
            for j, score in enumerate(self.answers.get(prompt, [])):
                mask = np.zeros((32, 32), np.uint8)
                mask[j * 8 : j * 8 + 6, k * 4 : k * 4 + 6] = 1
                instances.append(Instance(encode_mask(mask), (k * 4, j * 8, k * 4 + 6, j * 8 + 6), score))
            out.append(ConceptResult(0, ConceptPrompt(text=prompt), 0.9 if instances else 0.1, instances, (32, 32)))
        return [out]


ONTO = {"concepts": [{"name": "zanclus cornutus", "parent": "fish"}, {"name": "clownfish", "parent": "fish"}]}


def test_fallback_prompts_the_parent_only_when_the_concept_finds_nothing() -> None:
    teacher = ScriptedTeacher({"fish": [0.8, 0.3], "clownfish": [0.9]})
    labeller = PseudoLabeller(teacher, ontology_from_mapping(ONTO), TeacherConfig(threshold=0.5,
                                                                                  candidate_threshold=0.2))
    zanclus, clown = labeller.label(Image.new("RGB", (32, 32)))
    assert teacher.asked == [["zanclus cornutus", "clownfish"], ["fish"]]
    assert zanclus.prompts == ["zanclus cornutus", "fish"]
    assert [(i.score, p) for i, p in zanclus.instances] == [(0.8, "fish")]
    assert [(i.score, p) for i, p in zanclus.candidates] == [(0.3, "fish")]
    assert clown.prompts == ["clownfish"] and [p for _, p in clown.instances] == ["clownfish"]


def test_always_unites_concept_and_parent_and_never_asks_only_the_concept() -> None:
    teacher = ScriptedTeacher({"fish": [0.7], "zanclus cornutus": [0.6]})
    labeller = PseudoLabeller(teacher, ontology_from_mapping(ONTO), TeacherConfig(parent_prompt="always"))
    zanclus, _ = labeller.label(Image.new("RGB", (32, 32)))
    assert teacher.asked == [["zanclus cornutus", "fish", "clownfish"]]
    assert sorted(p for _, p in zanclus.instances) == ["fish", "zanclus cornutus"]  # different masks: both kept
    teacher = ScriptedTeacher({"fish": [0.7]})
    never = PseudoLabeller(teacher, ontology_from_mapping(ONTO), TeacherConfig(parent_prompt="never"))
    assert all(not lab.instances for lab in never.label(Image.new("RGB", (32, 32))))
    assert teacher.asked == [["zanclus cornutus", "clownfish"]]
