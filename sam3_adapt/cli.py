"""The `sam3-adapt` command line: one table of verbs, each a typed Python function (or LightningCLI for training).

Every verb's parser is built by jsonargparse from its function's signature (and, for `synth` and `recipe`,
from the config dataclass whose keys it takes), so the command line is the Python API and every verb takes
`--config FILE.yaml`, `--print_config` and dotted overrides (`--train.steps=200`, `--teacher.threshold=0.4`).
Nothing is imported before a verb is chosen: `sam3-adapt --help` answers at once, and a verb imports only
what it runs. User mistakes print one line on stderr (with "did you mean" for a misspelt key) and exit with 2.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from .verbs import Verb, run_verb

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: training is unfinished, so `fit && export` does not export




_SYNTH = "synth.config:SynthConfig"
_RECIPE = "recipes.config:RecipeConfig"
VERBS: dict[str, Verb | dict[str, Verb]] = {
    "recipe": {
        "run": Verb("recipes.verbs:run", "synth, fine-tune every arm, evaluate, report, export the best", _RECIPE,
                    "recipe"),
        "plan": Verb("recipes.verbs:plan", "list every run, what is finished, and the GPU-hours of the rest",
                     _RECIPE, "recipe"),
        "check": Verb("recipes.verbs:check", "say which data are missing and where to get them", _RECIPE, "recipe"),
        "ls": Verb("recipes.verbs:ls", "list the built-in recipes"),
        "cp": Verb("recipes.verbs:cp", "copy a built-in recipe to edit it"),
    },
    "predict": Verb("adapt.predicting:predict", "find every instance of concepts (phrases, exemplar boxes) in images"),
    "eval": Verb("adapt.evaluation.command:evaluate_files", "cgF1, pmF1, IL_MCC and COCO AP of predictions or a model"),
    "fit": Verb("adapt.training.cli:run_lightning_cli", "fine-tune SAM 3 (LightningCLI: --config, --print_config)"),
    "validate": Verb("adapt.training.cli:run_lightning_cli", "validate a model or checkpoint (LightningCLI)"),
    "test": Verb("adapt.training.cli:run_lightning_cli", "test a model or checkpoint (LightningCLI)"),
    "export": Verb("adapt.exporting:export", "export a checkpoint or model for transformers, peft or video"),
    "convert": {
        "semantic": Verb("adapt.data.convert_verbs:semantic", "class-index masks (VOC palette PNGs) -> COCO"),
        "yolo": Verb("adapt.data.convert_verbs:yolo", "YOLO segmentation or detection labels -> COCO"),
        "binary-masks": Verb("adapt.data.convert_verbs:binary_masks", "images + binary masks (Kvasir-SEG, ISIC)"),
        "mvtec": Verb("adapt.data.convert_verbs:mvtec", "MVTec AD: a phrase per defect type, good = negatives"),
        "foodseg103": Verb("adapt.data.convert_verbs:foodseg103", "FoodSeg103 -> COCO instances"),
        "uecfoodpix": Verb("adapt.data.convert_verbs:uecfoodpix", "UECFoodPix Complete -> COCO instances"),
        "labelstudio-tasks": Verb("adapt.data.convert_verbs:labelstudio_tasks",
                                  "COCO/SA-Co (or predictions) -> Label Studio tasks + labelling config"),
        "labelstudio": Verb("adapt.data.convert_verbs:labelstudio", "Label Studio JSON export -> COCO or SA-Co"),
    },
    "synth": {
        "run": Verb("synth.verbs:run", "all stages, resuming finished shards", _SYNTH, "config"),
        "generate": Verb("synth.verbs:generate", "make or read the images", _SYNTH, "config"),
        "label": Verb("synth.verbs:label", "pseudo-label with the teacher SAM 3", _SYNTH, "config"),
        "verify": Verb("synth.verbs:verify", "run the mask and exhaustivity verifiers", _SYNTH, "config"),
        "merge": Verb("synth.verbs:merge", "write pl.json, syn.json (exact.json), decisions and the summary", _SYNTH,
                      "config"),
        "calibrate": Verb("synth.verbs:calibrate", "measure the verifiers against human labels, pick thresholds",
                          _SYNTH, "config"),
    },
    "review": Verb("synth.review.server:review", "verify masks in the browser (MV, EV, add missed ones) -> a "
                   "calibration sample and an HQ file"),
    "overfit": Verb("adapt.overfitting:overfit", "sanity check: fit one synthetic pair with the official objective"),
    "info": Verb("sam3_model.info:describe", "parameter counts per component and LoRA preset"),
}
LIGHTNING = ("fit", "validate", "test")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sam3-adapt` console script."""
    try:
        return _main(argv)
    except BrokenPipeError:  # `sam3-adapt --help | head`: the reader left; no traceback, nothing more to write
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: list[str] | None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    # W&B takes our `verifiers` package for the LLM library of that name and advertises Weave on every run
    os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return 0 if argv else EXIT_USER_ERROR
    name, rest = argv[0], argv[1:]
    entry = VERBS.get(name)
    if entry is None:
        return _fail(f"unknown verb {name!r}{_closest(name, VERBS)}; `sam3-adapt --help` lists them")
    if isinstance(entry, dict):
        if not rest or rest[0] in ("-h", "--help"):
            print(overview(name))
            return 0 if rest else EXIT_USER_ERROR
        sub = rest[0]
        if sub not in entry:
            return _fail(f"unknown verb {name} {sub!r}{_closest(sub, entry)}; `sam3-adapt {name} --help` lists them")
        name, entry, rest = f"{name} {sub}", entry[sub], rest[1:]
    from sam3_model.errors import Sam3AdaptError

    try:
        if name in LIGHTNING:
            from adapt.training.cli import TrainingInterrupted, run_lightning_cli

            try:
                run_lightning_cli([name, *rest])
            except TrainingInterrupted as err:
                print(f"sam3-adapt: {err}", file=sys.stderr)
                return EXIT_INTERRUPTED
            return 0

        code = run_verb(name, entry, rest)
        return int(code or 0)
    except Sam3AdaptError as err:
        return _fail(str(err))


def _fail(message: str) -> int:
    print(f"sam3-adapt: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _closest(word: str, choices: Any) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def overview(group: str | None = None) -> str:
    """The verbs (or one group's verbs) with their help lines: what `--help` prints, importing nothing."""
    entries = VERBS[group] if group else VERBS
    prog = f"sam3-adapt {group}" if group else "sam3-adapt"
    lines = [f"usage: {prog} VERB [--config FILE.yaml] [--print_config] [--key=value ...]", "",
             (__doc__ or "").splitlines()[0] if not group else f"{group} verbs:", ""]
    width = max(14, max(len(verb) for verb in entries) + 2)
    for verb, entry in entries.items():
        if isinstance(entry, dict):
            lines.append(f"  {verb:<{width}}{' | '.join(entry)}")
        else:
            lines.append(f"  {verb:<{width}}{entry.help}")
    lines += ["", f"`{prog} VERB --help` shows a verb's keys; every verb takes --config, --print_config and "
              "dotted overrides."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
