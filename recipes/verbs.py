"""`sam3-adapt recipe run|check|ls|cp`: run a domain recipe, say what it still needs, list and copy the built-ins.

`run` and `check` take a `RecipeConfig`: a built-in name (`demo`) or a recipe YAML, any key overridden as
`--train.steps=200` or `--sizes='[50,200]'`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from sam3_model.atomic import atomic_write_text

from sam3_model.errors import ConfigError

from .config import BUILTIN, RECIPES_DIR, RecipeConfig

EXIT_MISSING = 2


def run(config: RecipeConfig, out: Path, quiet: bool = False, detach: bool = False) -> int:
    """Synth, fine-tune every arm, evaluate, report and export the best, into `out` (finished work is skipped).

    Args:
        out: the output folder (rerun to resume, or to add arms and seeds).
        quiet: no progress bars.
        detach: with train.launcher: slurm, return once the sweep is submitted; the same `recipe run` later
            collects the finished runs (and resubmits failed ones) and reports.
    """
    from .check import check_message, check_recipe
    from .runner import RecipeRun

    if detach and config.train.launcher != "slurm":
        raise ConfigError("--detach needs train.launcher: slurm (a local sweep runs in this process)")
    findings = check_recipe(config)
    if any(f.fatal for f in findings):
        print(check_message(config, findings), file=sys.stderr)
        return EXIT_MISSING
    if quiet:
        import os

        os.environ["TQDM_DISABLE"] = "1"  # every tqdm bar, in this process and the training workers
    outputs = RecipeRun(config, out, config.name, progress=not quiet, detach=detach).run()
    if outputs.detached:
        return 0
    print((Path(out) / "results.md").read_text().split("![")[0].strip())
    print(f"wrote {out}/results.csv, results.md, scaling.png"
          + (f"; best model exported to {outputs.export}" if outputs.export else ""))
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in outputs.timings.items()))
    return 0


def check(config: RecipeConfig) -> int:
    """Validate the recipe and list every missing input with where to get it (exit code 2 when any is missing)."""
    from .check import check_message, check_recipe

    findings = check_recipe(config)
    print(check_message(config, findings))
    return EXIT_MISSING if any(f.fatal for f in findings) else 0


def plan(config: RecipeConfig, out: Path | None = None, step_times: Path | None = None) -> int:
    """List every run the recipe would execute, which are finished, and the estimated GPU-hours of the rest.

    Args:
        out: a run folder of this recipe: its finished runs (and submitted cluster jobs) are marked.
        step_times: a gpu_suite.json from `python bench/gpu_suite.py` on your GPU (or a step-time table); default:
            the figures shipped with sam3-adapt (recipes/step_times.json).
    """
    from .plan import STEP_TIMES, plan_text, read_step_times

    table = read_step_times(step_times) if step_times is not None else []
    table += read_step_times(STEP_TIMES)
    print(plan_text(config, Path(out) if out is not None else None, table))
    return 0


def ls() -> None:
    """List the built-in recipes, with what each adapts to."""
    from sam3_model.configs import read_config_file

    for name in BUILTIN:
        data = read_config_file(RECIPES_DIR / f"{name}.yaml", "recipe")
        print(f"{name:<12}{data.get('description', '')}")


def cp(name: str, dest: Path) -> None:
    """Copy a built-in recipe's YAML to edit it (its relative paths then resolve next to the copy).

    Args:
        name: a built-in recipe (demo, food, medical, industrial).
        dest: the file (or folder) to write; an existing file is not overwritten.
    """
    if name not in BUILTIN:
        raise ConfigError(f"{name!r} is not a built-in recipe; choose one of {', '.join(BUILTIN)}")
    target = Path(dest) / f"{name}.yaml" if Path(dest).is_dir() else Path(dest)
    if target.exists():
        raise ConfigError(f"{target}: exists; choose another destination")
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = (RECIPES_DIR / f"{name}.yaml").read_text().splitlines(keepends=True)
    atomic_write_text(target, "".join(_absolute_value(line) for line in lines))
    print(f"wrote {target}; run it with `sam3-adapt recipe run {target} --out runs/{name}`")


_VALUE = re.compile(r"^(\s*[\w.]+:\s+)([^\s#{}\[\]]+)(\s*(#.*)?)$")


def _absolute_value(line: str) -> str:
    """A `key: value` line whose value is a file or folder next to the built-in recipes, made absolute (so the
    copy still finds the demo's base model wherever it is written)."""
    match = _VALUE.match(line.rstrip("\n"))
    if match and not Path(match.group(2)).is_absolute() and (RECIPES_DIR / match.group(2)).exists():
        return f"{match.group(1)}{RECIPES_DIR / match.group(2)}{match.group(3)}\n"
    return line
