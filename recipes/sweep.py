"""The runs of a recipe's sweep, in the order they run: zero-shot, then every trained arm x mix x size x seed, and
in later data-engine rounds the pseudo-labelled arms again. `recipe run` trains them; `recipe plan` lists them."""

from __future__ import annotations

from dataclasses import dataclass

from .config import RecipeConfig

PSEUDO_LABELLED = ("pl", "syn", "syn+hq", "gen")  # the arms a new data-engine round retrains


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep (its folder is `runs/<name>`)."""

    name: str
    arm: str
    mix: str
    size: int  # requested domain training images (0: zero-shot)
    seed: int
    round: int = 1

    @property
    def trains(self) -> bool:
        """Whether the run fine-tunes (zero-shot only evaluates)."""
        return self.arm != "zero-shot"


def run_name(arm: str, mix: str, size: int, seed: int, round_: int = 1) -> str:
    """The folder of one run: "syn-n200-s0", "syn+general-n200-s0", "syn-n200-s0-r2" (round 2)."""
    return f"{arm}{'' if mix == 'none' else '+' + mix}-n{size}-s{seed}{'' if round_ == 1 else f'-r{round_}'}"


def planned_runs(recipe: RecipeConfig, round_: int = 1) -> list[PlannedRun]:
    """The runs of one round, in order: zero-shot (round 1), then arm x mix x size x seed."""
    runs = []
    if "zero-shot" in recipe.arms and round_ == 1:
        runs.append(PlannedRun("zero-shot", "zero-shot", "none", 0, recipe.seeds[0]))
    for arm in recipe.trained_arms:
        if round_ > 1 and arm not in PSEUDO_LABELLED:
            continue
        for mix in recipe.mixes:
            for size in recipe.sizes:
                for seed in recipe.seeds:
                    runs.append(PlannedRun(run_name(arm, mix, size, seed, round_), arm, mix, size, seed, round_))
    return runs


def all_runs(recipe: RecipeConfig) -> list[PlannedRun]:
    """Every run of every round."""
    return [run for round_ in range(1, recipe.rounds + 1) for run in planned_runs(recipe, round_)]
