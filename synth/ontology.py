"""A domain ontology: concepts as noun phrases, each with an optional parent, synonyms and hard negatives.

YAML (or JSON):

    concepts:
      - name: sushi roll
        parent: sushi            # a coarser phrase the teacher knows (prompted when it misses the fine one)
        synonyms: [maki]
        hard_negatives: [onigiri]
      - name: nigiri
        parent: sushi            # same parent: "sushi roll" and "nigiri" are each other's hard negatives

Siblings (concepts sharing a parent) are hard negatives of each other without being listed. Concepts and hard
negatives are the phrases asked of every image: in labelling, and as (verified) negatives in training.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam3_model.errors import ConfigError
from sam3_model.formats import FormatProblem, check_phrase

_KEYS = ("name", "parent", "synonyms", "hard_negatives")


@dataclass(frozen=True)
class Concept:
    """One concept of the domain."""

    name: str
    parent: str | None = None
    synonyms: tuple[str, ...] = ()
    hard_negatives: tuple[str, ...] = ()


@dataclass
class Ontology:
    """The concepts of a domain, in file order."""

    concepts: list[Concept]
    source: str = "<inline>"
    _by_name: dict[str, Concept] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.concepts:
            raise ConfigError(f"{self.source}: the ontology has no concepts; list at least one under 'concepts:'")
        self._by_name = {}
        for concept in self.concepts:
            if concept.name in self._by_name:
                raise ConfigError(f"{self.source}: concept {concept.name!r} is listed twice")
            self._by_name[concept.name] = concept

    def __getitem__(self, name: str) -> Concept:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        """Concept names in file order."""
        return [c.name for c in self.concepts]

    def siblings(self, name: str) -> list[str]:
        """Concepts sharing `name`'s parent (not `name` itself)."""
        parent = self[name].parent
        return [c.name for c in self.concepts if parent is not None and c.parent == parent and c.name != name]

    def negatives_of(self, name: str) -> list[str]:
        """Hard negatives of a concept: its listed ones, then its siblings (no duplicates)."""
        return _unique([*self[name].hard_negatives, *self.siblings(name)])

    def phrases(self) -> list[str]:
        """Every phrase to ask of an image: the concepts, then listed hard negatives that are not concepts."""
        extra = [n for c in self.concepts for n in c.hard_negatives if n not in self._by_name]
        return _unique([*self.names, *extra])

    def confusable_with(self, phrase: str) -> list[str]:
        """Phrases a verifier should contrast `phrase` with: its negatives if a concept, else concepts listing it."""
        if phrase in self._by_name:
            return self.negatives_of(phrase)
        return [c.name for c in self.concepts if phrase in c.hard_negatives]

    def to_json(self) -> dict:
        """The ontology as a JSON-ready mapping (the same shape as the file)."""
        return {"concepts": [{"name": c.name, "parent": c.parent, "synonyms": list(c.synonyms),
                              "hard_negatives": list(c.hard_negatives)} for c in self.concepts]}


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _phrase(value: Any, where: str) -> str:
    """A noun phrase with single spaces (the phrase rules of every dataset reader), or `ConfigError` at `where`."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty noun phrase, got {value!r}")
    try:
        return " ".join(check_phrase(value).split())
    except FormatProblem as err:
        raise ConfigError(f"{where}: {err}") from None


def _phrases(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of noun phrases, got {value!r}")
    return tuple(_phrase(v, f"{where}[{i}]") for i, v in enumerate(value))


def ontology_from_mapping(data: Any, source: str = "<inline>") -> Ontology:
    """Check and build an `Ontology` from parsed YAML/JSON; `ConfigError` naming the entry otherwise."""
    if not isinstance(data, Mapping) or "concepts" not in data:
        raise ConfigError(f"{source}: expected a mapping with a 'concepts:' list")
    entries = data["concepts"]
    if entries is None or entries == []:
        raise ConfigError(f"{source}: the ontology has no concepts; list at least one under 'concepts:'")
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: 'concepts' must be a list, got {type(entries).__name__}")
    concepts = []
    for i, entry in enumerate(entries):
        where = f"{source}: concepts[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a phrase or a mapping with 'name', got {entry!r}")
        unknown = sorted(set(entry) - set(_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {list(_KEYS)}")
        if "name" not in entry:
            raise ConfigError(f"{where}: missing 'name'")
        name = _phrase(entry["name"], f"{where}.name")
        parent = entry.get("parent")
        concepts.append(Concept(
            name=name,
            parent=None if parent is None else _phrase(parent, f"{where}.parent"),
            synonyms=_phrases(entry.get("synonyms"), f"{where}.synonyms"),
            hard_negatives=tuple(n for n in _phrases(entry.get("hard_negatives"), f"{where}.hard_negatives")
                                 if n != name),
        ))
    return Ontology(concepts, source)


def load_ontology(path: str | os.PathLike[str]) -> Ontology:
    """Read an ontology YAML or JSON file."""
    from sam3_model.configs import read_config_file

    return ontology_from_mapping(read_config_file(Path(path), "ontology"), str(path))
