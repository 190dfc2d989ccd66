"""Which categories of a COCO file are phrases.

Annotation tools write categories that are not concepts: Roboflow's root category (the project name, id 0,
supercategory "none", no annotations) and labelme's `_background_`. Asked as phrases they would teach that the
concept is absent everywhere, so they are left out (and reported) unless asked to keep them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .phrases import check_phrase
from .problem import FormatProblem

BACKGROUND_NAMES = ("_background_", "__background__")  # labelme2coco, detectron/mmdet conventions


@dataclass(frozen=True)
class CategoryRules:
    """Which categories of a COCO file are phrases: placeholders dropped, names excluded, an optional allow-list."""

    exclude: tuple[str, ...] = ()  # category names left out with their annotations
    keep_only: tuple[str, ...] | None = None  # only these phrases (case-insensitive), e.g. a recipe's ontology
    keep_placeholders: bool = False  # keep Roboflow's root category and labelme's _background_ as phrases


@dataclass
class CategoryChoice:
    """The categories that are phrases (id -> name, in id order) and those left out (id -> why)."""

    kept: dict[Any, str]
    dropped: dict[Any, str] = field(default_factory=dict)

    def notes(self, source: str, names: Mapping[Any, str]) -> list[str]:
        """One line per left-out category, naming the file, for the user to read."""
        return [f"{source}: left out category {names[c]!r} (id {c!r}): {why}" for c, why in self.dropped.items()]


def placeholder_reason(category: Mapping[str, Any], used_ids: set, supercategories: set) -> str | None:
    """Why a category is an annotation tool's placeholder rather than a concept, or None when it is a concept."""
    name = str(category.get("name", "")).strip()
    if name in BACKGROUND_NAMES:
        return "labelme's background class, not a concept"
    root = category.get("supercategory") == "none" and category["id"] not in used_ids
    if root and (category["id"] == 0 or name in supercategories):
        return "Roboflow's root category (the project name: supercategory 'none', no annotations)"
    return None


def read_categories(categories: Any, annotations: Iterable[Any], rules: CategoryRules, source: str,
                    sort_key=lambda v: v) -> CategoryChoice:  # noqa: B008
    """A COCO file's `categories` checked (each an object with an integer or string `id`, unique, and a phrase
    for a `name`) and chosen by `rules`; `FormatProblem` naming `source` and the entry. Training and evaluation
    read categories with this one function, so they accept and refuse the same files."""
    if not isinstance(categories, list):
        raise FormatProblem(f"{source}: 'categories' must be a list")
    ids: set = set()
    for i, cat in enumerate(categories):
        where = f"{source}: categories[{i}]"
        if not isinstance(cat, Mapping) or "id" not in cat or "name" not in cat:
            raise FormatProblem(f"{where}: a category needs 'id' and 'name'")
        cat_id = cat["id"]
        if not ((isinstance(cat_id, int) and not isinstance(cat_id, bool)) or (isinstance(cat_id, str) and cat_id)):
            raise FormatProblem(f"{where}: id must be an integer or a string, got {cat_id!r}")
        if cat_id in ids:
            raise FormatProblem(f"{where}: duplicate category id {cat_id!r}")
        ids.add(cat_id)
        try:
            check_phrase(cat["name"])
        except FormatProblem as err:
            raise FormatProblem(f"{where}: name (it is the phrase): {err}") from None
    try:
        return choose_categories(categories, annotations, rules, sort_key)
    except FormatProblem as err:
        raise FormatProblem(f"{source}: {err}") from None


def choose_categories(categories: Sequence[Any], annotations: Iterable[Any], rules: CategoryRules = CategoryRules(),
                      sort_key=lambda v: v) -> CategoryChoice:  # noqa: B008 - frozen
    """Apply `rules` to checked categories (each a mapping with 'id' and 'name'); `FormatProblem` on clashes.

    Names must differ among the kept categories only: a placeholder or excluded category may share a real
    class's name (Roboflow's root "nails" beside "Nail").
    """
    used = {a.get("category_id") for a in annotations if isinstance(a, Mapping)}
    supers = {c.get("supercategory") for c in categories}
    excluded = {n.strip().lower() for n in rules.exclude}
    allowed = None if rules.keep_only is None else {n.strip().lower() for n in rules.keep_only}
    kept: dict[Any, str] = {}
    dropped: dict[Any, str] = {}
    seen: dict[str, Any] = {}
    for cat in categories:
        name = check_phrase(cat["name"])
        why = None if rules.keep_placeholders else placeholder_reason(cat, used, supers)
        if why is None and name.lower() in excluded:
            why = "excluded (exclude_categories)"
        if why is None and allowed is not None and name.lower() not in allowed:
            why = "not one of the dataset's phrases"
        if why is not None:
            dropped[cat["id"]] = why
            continue
        if name in seen:
            raise FormatProblem(f"name {name!r} is also category {seen[name]!r}'s; each category is a phrase, so "
                                "names must differ (merge the two categories, or exclude one)")
        seen[name] = cat["id"]
        kept[cat["id"]] = name
    return CategoryChoice({c: kept[c] for c in sorted(kept, key=sort_key)}, dropped)
