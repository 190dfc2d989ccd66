"""`sam3-adapt fit|validate|test --config FILE.yaml`: LightningCLI over `Sam3FineTuner` and `Sam3DataModule`.

Lightning conventions hold: `--print_config`, dotted overrides (`--trainer.devices=8`,
`--model.trainable.mode=full`), `--ckpt_path last` to resume. Defaults a practitioner expects are set here:
bf16-mixed, gradient clipping 0.1 (official), W&B in offline mode (no account or network; `wandb sync` uploads
later) with the whole resolved config as the run's config and, with `--trainer.logger.init_args.log_model=true`,
the best checkpoint as an artifact; checkpoints always saved (last, and best by validation cgF1) under
`<default_root_dir>/checkpoints`, and DDP with `find_unused_parameters` whenever more than one device or node is
used (SAM 3 always has unused parameters, e.g. the geometry encoder on text-only prompts).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from adapt.data.datamodule import Sam3DataModule
from adapt.training.checkpoints import remove_leftover_temporaries
from adapt.training.module import Sam3FineTuner
from adapt.training.trainer import TRAINER_DEFAULTS, quiet_wandb_loggers, select_strategy
from sam3_model.configs import read_config_file
from sam3_model.errors import ConfigError
from sam3_model.notices import notice

SUBCOMMANDS = ("fit", "validate", "test")

CLI_DEFAULTS: dict[str, Any] = {  # the shared TRAINER_DEFAULTS, plus what only `fit` needs
    **TRAINER_DEFAULTS,
    "default_root_dir": "runs/fit",  # DEFAULT_ROOT: a fresh runs/fit-N per run, see Sam3CLI
    "logger": {"class_path": "adapt.training.loggers.Sam3WandbLogger",
               "init_args": {"project": "sam3-adapt", "offline": True}},
    # The logged hyper-parameters are the whole resolved config (LoggedConfig), of which the module's are a part;
    # Lightning's own logging of the module's would then replace the `model` section with the model's name.
    "enable_autolog_hparams": False,
    "plugins": [{"class_path": "adapt.training.checkpoints.AtomicCheckpointIO"}],
}


DEFAULT_ROOT = "runs/fit"


def run_folder(base: str, resume: bool = False) -> str:
    """`base` when it is free, else the first free `base-2`, `base-3`...; with `resume`, the newest that exists."""
    taken = [base] if os.path.exists(base) else []
    k = 2
    while os.path.exists(f"{base}-{k}"):
        taken.append(f"{base}-{k}")
        k += 1
    if resume and taken:
        return taken[-1]
    return base if not taken else f"{base}-{k}"


def checkpoint_dir(default_root_dir: str | None) -> str:
    """Where checkpoints go: one fixed folder per run directory, so `--ckpt_path last` finds them again."""
    return os.path.join(default_root_dir or ".", "checkpoints")


class LoggedConfig(SaveConfigCallback):
    """Lightning's `config.yaml` in the log folder, and the same resolved config (model, data, trainer,
    checkpoints, seed; every default included) as nested hyper-parameters of every logger: the W&B run's config."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Log the resolved config (rank 0 only, as Lightning calls it)."""
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


class Sam3CLI(LightningCLI):
    """LightningCLI with a forced checkpoint callback, a run-directory-relative logger and the DDP default."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Two forced checkpoint callbacks: the best by validation cgF1, and `last.ckpt`, rewritten at every
        # validation (or epoch end) and when training stops on an exception. Lightning's own save_last only
        # refreshes last.ckpt when a top-k checkpoint is saved, i.e. not after a step that did not improve.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({  # no -v1, -v2... copies: a rerun reaching the same step overwrites its checkpoint
            "checkpoint.monitor": "val/cgF1", "checkpoint.mode": "max", "checkpoint.save_top_k": 1,
            "checkpoint.filename": "best-step{step}", "checkpoint.auto_insert_metric_name": False,
            "checkpoint.enable_version_counter": False,
        })
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({
            "last_checkpoint.monitor": None, "last_checkpoint.save_top_k": 1, "last_checkpoint.filename": "last",
            "last_checkpoint.enable_version_counter": False, "last_checkpoint.save_on_exception": True,
        })
        # out of memory: retry one rung down the ladder (adapt/training/memory.py), or stop
        parser.add_argument("--on_oom", choices=("recover", "stop"), default="recover",
                            help="out of memory in fit: recover (halve the batch and raise gradient accumulation, "
                                 "then checkpoint activations, then chunk phrases) or stop")
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)
        parser.link_arguments("trainer.default_root_dir", "last_checkpoint.dirpath", compute_fn=checkpoint_dir)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Lightning's parse, with a did-you-mean for an unknown option ("--model.lerning_rate")."""
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            text = str(err)
            on_line = re.search(r"unrecognized arguments: (--[\w.\-]+)", text)
            in_file = re.search(r"does not accept option '([\w.\-]+)'", text)
            verb = next((a for a in (args if args is not None else sys.argv[1:]) if a in SUBCOMMANDS), None)
            sub = parser._subcommands_action._name_parser_map.get(verb) if verb and parser._subcommands_action else None
            if (on_line is None and in_file is None) or sub is None:
                raise
            known = [o for o in sub._option_string_actions if o.startswith("--")]
            if on_line is not None:
                option = on_line.group(1).split("=", 1)[0]
                raise argparse.ArgumentError(None, f"unknown option {option}{_closest_option(option, known)}") from None
            hint = _closest_option(in_file.group(1), known).replace(" --", " ")
            raise argparse.ArgumentError(None, " ".join(text.split()) + hint) from None

    def _parse_ckpt_path(self) -> None:
        """Lightning merges a checkpoint's hyper-parameters into the config; here they never replace it (a crafted
        checkpoint could swap the base model). `Sam3FineTuner.on_load_checkpoint` refuses one that does not fit."""

    def before_fit(self) -> None:
        """Remove the temp files of saves a killed run left in the checkpoint folder; note --on_oom."""
        from adapt.training.memory import RUNNING

        RUNNING["on_oom"] = self.config.get(self.subcommand, self.config).get("on_oom", "recover")
        for path in remove_leftover_temporaries(checkpoint_dir(self.trainer.default_root_dir)):
            notice(f"removed {path}, the temp file of a checkpoint save that was interrupted")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        """The Trainer, with the progress bar that names its stage and counts steps (unless bars are off) and the
        run's memory report (memory.json in the run folder)."""
        from adapt.training.memory import MemoryReport

        callbacks = [*callbacks, MemoryReport()]
        if config.get("enable_progress_bar", True) is not False:
            from adapt.training.progress import StageProgressBar

            callbacks = [*callbacks, StageProgressBar()]
        quiet_wandb_loggers(config.get("logger"))  # no W&B warning about Lightning's anonymous=None
        return super()._instantiate_trainer(config, callbacks)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config["trainer"]
        if self.subcommand == "fit" and trainer.get("default_root_dir") == DEFAULT_ROOT:
            # never over another run: runs/fit, runs/fit-2, ...; resuming (--ckpt_path) takes the newest one
            trainer["default_root_dir"] = run_folder(DEFAULT_ROOT, resume=config.get("ckpt_path") is not None)
            for name in ("checkpoint", "last_checkpoint"):
                config[name]["dirpath"] = checkpoint_dir(trainer["default_root_dir"])
            notice(f"this run's folder: {trainer['default_root_dir']} (--trainer.default_root_dir chooses another)")
        root = trainer.get("default_root_dir") or "."
        for logger in _as_list(trainer.get("logger")):
            init_args = logger.get("init_args") if hasattr(logger, "get") else None
            if init_args is not None and init_args.get("save_dir") in (None, ".", ""):
                init_args["save_dir"] = root  # logs live in the run directory, beside the checkpoints
        if isinstance(trainer.get("strategy"), (str, type(None))):  # the strategy rule every trainer follows
            trainer["strategy"] = select_strategy(trainer.get("strategy"), trainer.get("devices"),
                                                  trainer.get("accelerator"), trainer.get("num_nodes"))


def _as_list(value: Any) -> list:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class TrainingInterrupted(Exception):
    """Training stopped on SIGTERM (e.g. a SLURM preemption) before it finished; `last.ckpt` holds where it was."""


def run_lightning_cli(args: list[str]) -> None:
    """Run one `fit`, `validate` or `test` subcommand with `args` (the command line after `sam3-adapt`).

    Lightning's and torch's errors about the user's input become one-line `Sam3AdaptError`s; a SIGTERM that
    stops training raises `TrainingInterrupted` (Lightning would exit with 0, as if the run had finished). A `fit`
    that runs out of memory in one process is run again one rung down the recovery ladder (--on_oom=recover).
    """
    from adapt.training.memory import RUNNING, MemorySettings, recover_from_oom, write_report

    RUNNING.clear()

    def attempt(settings: MemorySettings | None) -> None:
        if settings is None:  # the command as given
            return _run_cli(args)
        return _run_cli([*args, f"--data.batch_size={settings.batch_size}",
                         f"--trainer.accumulate_grad_batches={settings.accumulate_grad_batches}",
                         f"--model.trainable.activation_checkpointing={str(settings.activation_checkpointing).lower()}",
                         f"--model.phrase_chunk_size={settings.phrase_chunk_size}",
                         f"--trainer.default_root_dir={RUNNING['default_root_dir']}"])

    def off() -> str | None:
        """Why this run is not restarted lower on the ladder, if it is not."""
        if RUNNING.get("on_oom", "recover") != "recover":
            return "--on_oom=stop"
        ranks = RUNNING.get("world_size", 1)
        return f"{ranks} ranks would all have to restart" if ranks > 1 else None

    _, ladder = recover_from_oom(attempt, notice, off=off)
    if len(ladder) > 1 and RUNNING.get("default_root_dir"):
        write_report(Path(RUNNING["default_root_dir"]), {"ladder": ladder})


def _run_cli(args: list[str]) -> None:
    """One LightningCLI run of `args` (see `run_lightning_cli`)."""
    import warnings

    # a retry of the recovery ladder passes its own args beside the process's command line, knowingly
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    configs = _config_files(args)
    for path in configs:  # each must exist and parse as YAML; else one line naming it (and the line, column)
        read_config_file(path, "--config")
    # When the command line is the process's own, let LightningCLI read sys.argv: DDP's launcher re-runs it.
    cli = None
    try:
        cli = Sam3CLI(
            Sam3FineTuner, Sam3DataModule, args=None if args == sys.argv[1:] else args, seed_everything_default=0,
            trainer_defaults=CLI_DEFAULTS, save_config_callback=LoggedConfig, save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "sam3-adapt", "exit_on_error": False,
                           **{verb: {"exit_on_error": False} for verb in SUBCOMMANDS}}, run=True,
        )
    except SIGTERMException:
        raise TrainingInterrupted("stopped by SIGTERM before training finished; the last checkpoint holds the "
                                  "progress: rerun with --ckpt_path last to resume") from None
    except MisconfigurationException as err:
        raise ConfigError(_first_line(err)) from None
    except argparse.ArgumentError as err:  # jsonargparse, with exit_on_error=False: no usage dump
        raise ConfigError(_argument_message(str(err), args, configs)) from None
    if cli is not None and getattr(cli.trainer, "received_sigterm", False):
        raise TrainingInterrupted(f"stopped by SIGTERM at step {cli.trainer.global_step}; rerun with --ckpt_path last "
                                  "to resume")


def _closest_option(option: str, known: list[str]) -> str:
    """A did-you-mean for `option`, by its last part: a sibling first ("--trainer.max_stepz" ->
    "--trainer.max_steps"), else an option anywhere ("--model.lr" -> "--model.optimizer.lr")."""
    parent, _, leaf = option.lstrip("-").rpartition(".")
    for pool in ([o for o in known if o.lstrip("-").rpartition(".")[0] == parent], known):
        by_leaf: dict[str, str] = {}
        for name in pool:
            by_leaf.setdefault(name.lstrip("-").rpartition(".")[2], name)
        close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.7)
        if close:
            return f"; did you mean {by_leaf[close[0]]}?"
    return ""


def _argument_message(message: str, args: list[str], configs: list[str]) -> str:
    """jsonargparse's error on one line, naming the config file when the bad key came from it."""
    text = " ".join(message.split())
    option = re.search(r"option '([^']+)'", text)
    from_file = option is not None and not any(a.split("=", 1)[0] == f"--{option.group(1)}" for a in args)
    if configs and (from_file or "parsing config" in text.lower()):
        return f"{configs[-1] if len(configs) == 1 else ', '.join(configs)}: {text}"
    return text


def _config_files(args: list[str]) -> list[str]:
    """The --config / -c files of a command line, in order."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
