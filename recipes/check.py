"""`sam3-adapt recipe check`: is everything a recipe needs on this machine, and if not, where to get it.

Data files and folders must exist. A Hub model counts as present when it is in the local Hugging Face cache;
when it is not, it is missing offline (HF_HUB_OFFLINE=1) and a download note otherwise.
"""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam3_model import storage
from sam3_model.errors import Sam3AdaptError
from sam3_model.presets import PRESETS

from .config import DataRef, ImagesRef, RecipeConfig

HUB_HINT = ("download it once with `hf download {id}` (gated models: accept the licence on "
            "https://huggingface.co/{id} and run `hf auth login` first)")


@dataclass
class Finding:
    """One thing the recipe needs that is not here (or must still be downloaded)."""

    key: str  # where in the recipe, e.g. "hq.train"
    what: str  # what is missing
    get: str  # where to get it
    fatal: bool = True  # False: it will be downloaded on first use

    def line(self) -> str:
        """"hq.train: data/x.json not found. Get: ..."."""
        return f"{self.key}: {self.what}." + (f" Get it: {self.get}" if self.get else "")


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str) or isinstance(
            try_to_load_from_cache(repo_id, "model_index.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return False


def _looks_local(source: str) -> bool:
    """A path, not a Hub id: Hub ids are "name" or "owner/name", dots allowed ("Qwen/Qwen2.5-VL-7B-Instruct")."""
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1:
        return True
    return "/" not in source and bool(Path(source).suffix)


def check_model(key: str, source: str) -> list[Finding]:
    """A preset, a local directory (made absolute at load) or a Hub id in the cache."""
    if source in PRESETS:
        return []
    local = Path(source)
    if local.is_dir():
        return []
    if _looks_local(source):
        return [Finding(key, f"model directory {local} not found", "")]
    if _hub_cached(source):
        return []
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    state = "not in the local Hugging Face cache" + (" and the Hub is off (HF_HUB_OFFLINE=1)" if offline else "")
    return [Finding(key, f"model {source} is {state}", HUB_HINT.format(id=source), fatal=offline)]


def check_data(key: str, ref: DataRef | None) -> list[Finding]:
    """A labelled dataset: its annotation file and image folder exist (rendered toy data always can)."""
    if ref is None:
        return []
    found = []
    if ref.path is not None:
        if (problem := _missing(storage.is_file, ref.path)) is not None:
            found.append(Finding(key, f"annotation file {ref.path} {problem}", ref.get))
        if ref.images and (problem := _missing(storage.is_dir, ref.images)) is not None:
            found.append(Finding(f"{key}.images", f"image folder {ref.images} {problem}", ref.get))
    if isinstance(ref.ontology, str):
        found += _check_file(f"{key}.ontology", ref.ontology, "")
    return found


def _check_file(key: str, value: str, get: str) -> list[Finding]:
    problem = _missing(storage.exists, value)
    return [] if problem is None else [Finding(key, f"{value} {problem}", get)]


def _glob(pattern: str) -> list[str]:
    """The files a local or URL glob pattern matches."""
    return storage.glob_files(pattern) if storage.is_url(pattern) else globlib.glob(pattern, recursive=True)


def _missing(test: Callable[[str], Any], value: str) -> str | None:
    """None when `test(value)` holds (a local path or an fsspec URL); else what is wrong, as words."""
    try:
        return None if test(value) else "not found"
    except (OSError, Sam3AdaptError) as error:  # an unreachable store, a missing fsspec driver
        return f"cannot be read ({error})"


def check_images(key: str, ref: ImagesRef | None) -> list[Finding]:
    """An image source for the data engine: its folder, glob, list, instance file or generator model."""
    if ref is None:
        return []
    source = ref.source
    found: list[Finding] = []
    pool = source.pool
    if pool is not None and pool.folder and (problem := _missing(storage.is_dir, pool.folder)) is not None:
        found.append(Finding(f"{key}.pool.folder", f"image folder {pool.folder} {problem}", ref.get))
    if pool is not None and pool.glob and (problem := _missing(_glob, pool.glob)) is not None:
        found.append(Finding(f"{key}.pool.glob", "no image matches " + pool.glob
                             + ("" if problem == "not found" else f": it {problem}"), ref.get))
    if pool is not None and pool.list_file:
        found += _check_file(f"{key}.pool.list_file", pool.list_file, ref.get)
    if source.copy_paste is not None:
        found += _check_file(f"{key}.copy_paste.instances", source.copy_paste.instances, ref.get)
    if source.generate is not None:
        found += check_model(f"{key}.generate.pipeline", source.generate.pipeline)
    return found


def check_recipe(recipe: RecipeConfig) -> list[Finding]:
    """Everything the recipe needs that is not on this machine (fatal ones and download notes)."""
    found = check_model("base_model", recipe.base_model)
    teacher = recipe.teacher.model
    if teacher and teacher != recipe.base_model:
        found += check_model("teacher.model", teacher)
    if isinstance(recipe.ontology, str):
        found += _check_file("ontology", recipe.ontology, "")
    found += check_data("hq.train", recipe.hq.train)
    found += check_data("hq.test", recipe.hq.test)
    general = recipe.general
    if general is not None and ("general" in recipe.mixes or general.held_out):
        found += check_data("general.train", general.train)
    if general is not None:
        found += check_data("general.test", general.test)
    if recipe.calibration is not None and recipe.calibration.human:
        found += _check_file("calibration.human", recipe.calibration.human, "a human-labelled sample in the format "
                             "of `sam3-adapt synth calibrate` (verifiers/calibration.py)")
    if any(a in recipe.arms for a in ("pl", "syn", "syn+hq")):
        found += check_images("pool.source", recipe.pool)
    if "gen" in recipe.arms:
        found += check_images("generator.source", recipe.generator)
    for name, config in recipe.verify.configured():
        if isinstance(getattr(config, "model", None), str):
            found += check_model(f"verify.{name}.model", config.model)
    return found


def check_message(recipe: RecipeConfig, findings: list[Finding], where: str = "") -> str:
    """What `recipe check` prints: ready, or every missing item with where to get it."""
    fatal = [f for f in findings if f.fatal]
    notes = [f for f in findings if not f.fatal]
    name = f"recipe {recipe.name}" + (f" ({where})" if where and where != recipe.name else "")
    if not fatal:
        head = f"{name}: ready"
        return "\n".join([head + (f"; {len(notes)} model(s) will be downloaded on first use:" if notes else "."),
                          *[f"  {n.line()}" for n in notes]])
    lines = [f"{name}: {len(fatal)} missing:", *[f"  {f.line()}" for f in fatal]]
    if notes:
        lines += ["and to be downloaded on first use:", *[f"  {n.line()}" for n in notes]]
    return "\n".join(lines)
