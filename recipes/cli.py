"""`sam3-adapt recipe run|check NAME_OR_PATH`: run a domain recipe, or say what it still needs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from sam3_model.errors import ConfigError

EXIT_MISSING = 2


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`--set train.steps=50 --set sizes=[20]` -> nested overrides {"train": {"steps": 50}, "sizes": [20]}."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. train.steps=50)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value does not parse as YAML") from None
        *parents, leaf = key.strip().split(".")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is set to a value and a section at once")
        node[leaf] = parsed
    return overrides


def _load(args: argparse.Namespace):
    from .config import load_recipe, recipe_path

    path = recipe_path(args.recipe)  # once: it says which file a name resolved to
    return load_recipe(path, parse_sets(args.set)), str(path)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the recipe and list every missing input with where to get it (exit 2 when any is missing)."""
    from .check import check_message, check_recipe

    recipe, where = _load(args)
    findings = check_recipe(recipe)
    print(check_message(recipe, findings, where))
    return EXIT_MISSING if any(f.fatal for f in findings) else 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run every step of the recipe into --out (finished work is skipped)."""
    from .check import check_message, check_recipe
    from .runner import RecipeRun

    recipe, where = _load(args)
    findings = check_recipe(recipe)
    if any(f.fatal for f in findings):
        print(check_message(recipe, findings, where), file=sys.stderr)
        return EXIT_MISSING
    if args.quiet:
        import os

        os.environ["TQDM_DISABLE"] = "1"  # every tqdm bar, in this process and the training workers
    outputs = RecipeRun(recipe, args.out, where, progress=not args.quiet).run()
    print((args.out / "results.md").read_text().split("![")[0].strip())
    print(f"wrote {args.out}/results.csv, results.md, scaling.png"
          + (f"; best model exported to {outputs.export}" if outputs.export else ""))
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in outputs.timings.items()))
    return 0


def add_recipe_parser(verbs: argparse._SubParsersAction) -> None:
    """Register `recipe run` and `recipe check` on the main parser."""
    recipe = verbs.add_parser("recipe", help="domain recipes: compare zero-shot, PL, SYN, HQ and generated data")
    actions = recipe.add_subparsers(dest="action", required=True)
    for action, text, func in (("run", "synth, fine-tune every arm, evaluate, report, export the best", cmd_run),
                               ("check", "validate a recipe and say which data are missing and where to get them",
                                cmd_check)):
        p = actions.add_parser(action, help=text)
        p.add_argument("recipe", help="built-in recipe (demo, food, medical, industrial) or a recipe YAML")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe key (dotted, YAML value), e.g. --set train.steps=50 --set sizes=[20]")
        if action == "run":
            p.add_argument("--out", type=Path, required=True, help="output folder (rerun to resume)")
            p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
