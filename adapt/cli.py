"""The `sam3-adapt` command line: one verb per job.

User mistakes (bad files, prompts, ids) print one line on stderr and exit with code 2; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from adapt.data.convert_cli import add_convert_parser
from adapt.predict_cli import MODEL_HELP, _segmenter, add_category_arguments, add_predict_parser, category_rules
from sam3_model.errors import Sam3AdaptError
from sam3_model.loading import DEFAULT_HUB_ID
from sam3_model.presets import PRESETS
from recipes.cli import add_recipe_parser
from synth.cli import add_synth_parser

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: the work is unfinished, so `fit && export` does not export


def cmd_overfit(args: argparse.Namespace) -> int:
    """Fit one synthetic pair with the official objective and export the result (a sanity check)."""
    from adapt.overfit import run_overfit
    from sam3_model.adapters import LoraSettings

    lora = LoraSettings(preset=args.lora, r=args.lora_rank, alpha=2 * args.lora_rank) if args.lora else None
    report = run_overfit(args.model, args.out, steps=args.steps, lr=args.lr, seed=args.seed, lora=lora)
    print(f"loss {report.first_loss:.2f} -> {report.last_loss:.2f} ({100 * report.loss_drop:.1f}% lower); "
          f"mask IoU {report.mask_iou_before:.3f} -> {report.mask_iou_after:.3f}; score {report.score_after:.3f}")
    print(f"wrote {args.out}/report.json, losses.csv, losses.png and the merged model in {report.export_dir}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a training checkpoint or a model (optionally with a LoRA adapter merged) for transformers or video."""
    from adapt.model_source import training_checkpoint

    kind = "video" if args.video else "adapter" if args.adapter_only else "merged"
    if args.video and args.adapter_only:
        raise Sam3AdaptError("choose one of --video and --adapter-only")
    if (args.checkpoint is None) == (args.model is None):
        raise Sam3AdaptError("give exactly one of --checkpoint (a training checkpoint or run folder) and --model")
    from sam3_model.loading import is_explicit_path
    from sam3_model.presets import PRESETS

    names_preset = args.model in PRESETS and not is_explicit_path(args.model)
    if args.checkpoint:
        checkpoint = training_checkpoint(args.checkpoint)
    else:  # --model may name a checkpoint or a run folder too, unless it is a preset or comes with --adapter
        checkpoint = None if args.adapter or names_preset else training_checkpoint(args.model)
    if args.checkpoint and checkpoint is None:
        raise Sam3AdaptError(f"--checkpoint {args.checkpoint}: neither a .ckpt file nor a run folder with "
                             "checkpoints/best-*.ckpt or checkpoints/last.ckpt")
    if checkpoint is not None:
        from adapt.training.checkpoints import export_checkpoint

        out = export_checkpoint(checkpoint, args.out, kind, base_video_dir=args.base_video, data=args.data)
        print(f"wrote {kind} export of {checkpoint} to {out}")
        return 0
    from peft import PeftModel

    from sam3_model.export import export_adapter, export_merged, export_video
    from sam3_model.loading import load_model
    from sam3_model.model_card import ModelCardInfo
    from sam3_model.notices import warn

    if names_preset:
        warn(f"--model {args.model} is a preset with random weights: the export is not a trained model")
    model, processor = load_model(args.model)
    if args.adapter:
        if not (Path(args.adapter) / "adapter_config.json").is_file():
            raise Sam3AdaptError(f"{args.adapter}: no adapter_config.json; pass a directory written by an adapter export")
        model = PeftModel.from_pretrained(model, args.adapter)
    metrics = _read_metrics(args.metrics) if args.metrics else {}
    card = ModelCardInfo(base_model=args.model, data=args.data, recipe=args.recipe, metrics=metrics)
    if kind == "adapter":
        if not args.adapter:
            raise Sam3AdaptError("--adapter-only with --model needs --adapter (the adapter to re-export)")
        out = export_adapter(model, args.out, card)
    elif kind == "merged":
        out = export_merged(model, processor, args.out, card)
    else:
        out = export_video(model, args.out, card, base_video_dir=args.base_video)
    print(f"wrote {kind} export to {out}")
    return 0


def _read_metrics(path: Path) -> dict[str, float]:
    """--metrics: a JSON object of numbers (e.g. eval's metrics.json), or one line naming the file."""
    from sam3_model.formats import read_json

    data = read_json(path, "metrics")
    if not isinstance(data, dict):
        raise Sam3AdaptError(f"{path}: metrics must be a JSON object of name: number, got {type(data).__name__}")
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def cmd_eval(args: argparse.Namespace) -> int:
    """SA-Co metrics (cgF1, pmF1, IL_MCC) and, for COCO ground truth, COCO AP; --model predicts first."""
    from adapt.evaluation import evaluate, write_evaluation

    if (args.pred is None) == (args.model is None):
        raise Sam3AdaptError("give exactly one of --pred PREDS.JSON (predictions to score) and --model M "
                             "(predict on the ground truth's images, then score)")
    rules = category_rules(args)
    pred_path, predictions = args.pred, None
    if args.model is not None:
        predictions, pred_path = _predict_for_eval(args, rules)
    evaluation = evaluate(args.gt, pred_path, iou_type=args.iou_type, format=args.format, rules=rules,
                          predictions=predictions)
    write_evaluation(evaluation, args.out, args.report, title=f"Evaluation of {Path(pred_path).name}")
    m = evaluation.metrics
    line = (f"{evaluation.format} {evaluation.iou_type}: cgF1 {100 * m['cgF1']:.2f}  pmF1 {100 * m['pmF1']:.2f}  "
            f"IL_MCC {m['IL_MCC']:.3f}  ({int(m['num_pairs'])} pairs")
    skipped = int(m.get("num_pairs_skipped_non_exhaustive", 0))
    line += f", {skipped} non-exhaustive skipped)" if skipped else ")"
    if "AP" in m:
        line += f"  AP {100 * m['AP']:.2f}  AP50 {100 * m['AP50']:.2f}"
    print(line)
    for note in evaluation.notes:
        print(note, file=sys.stderr)
    print(f"wrote {args.out}" + (f" and {args.report}" if args.report else ""))
    return 0


def _predict_for_eval(args: argparse.Namespace, rules) -> tuple[list[dict], Path]:
    """`eval --model`: predict on the first ground truth's images and phrases; write them beside metrics.json."""
    from adapt.evaluation.on_truth import check_truth_images, predict_on_truth, truth_queries
    from sam3_model.atomic import atomic_write_text

    queries = truth_queries(args.gt[0], args.images, rules, args.format)
    check_truth_images(queries)
    segmenter = _segmenter(args, args.threshold, args.top_k, "evaluation")
    predictions = predict_on_truth(segmenter, queries)
    pred_path = args.pred_out or Path(args.out).with_name("predictions.json")
    atomic_write_text(pred_path, json.dumps(predictions))
    print(f"wrote {pred_path} ({len(predictions)} results on {len(queries.images)} images)")
    return predictions, pred_path


def cmd_info(args: argparse.Namespace) -> int:
    """Parameter counts per component and per LoRA preset."""
    import torch

    from sam3_model.adapters import LORA_PRESETS, LoraSettings, apply_lora, trainable_summary
    from sam3_model.loading import load_model
    from sam3_model.presets import build_config

    if args.model in PRESETS:  # count on the meta device: no memory, no weights
        from transformers import Sam3Model

        with torch.device("meta"):
            model = Sam3Model(build_config(args.model))
    else:
        model, _ = load_model(args.model)
    total = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {total / 1e6:.2f}M parameters")
    summary = trainable_summary(model)
    for key, count in summary.items():
        if key.endswith("/total") and not key.startswith("all/"):
            print(f"  {key.removesuffix('/total'):<16}{count / 1e6:9.2f}M")
    for preset in LORA_PRESETS:
        lora_model = apply_lora(model, LoraSettings(preset=preset, r=args.lora_rank))
        trainable = sum(p.numel() for p in lora_model.parameters() if p.requires_grad)
        print(f"  LoRA {preset:<16} r={args.lora_rank}: {trainable / 1e6:.2f}M trainable "
              f"({100 * trainable / total:.2f}%)")
        model = lora_model.unload()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    parser = argparse.ArgumentParser(prog="sam3-adapt", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    model_help = f"preset ({', '.join(PRESETS)}), local directory, or Hub id (default {DEFAULT_HUB_ID})"

    for verb, what in (("fit", "fine-tune SAM 3"), ("validate", "validate a model or checkpoint"),
                       ("test", "test a model or checkpoint")):
        verbs.add_parser(verb, add_help=False,  # handled by LightningCLI before argparse runs (see main)
                         help=f"{what} (LightningCLI: --config FILE.yaml, --print_config, --trainer.devices=8, ...)")
    add_predict_parser(verbs)
    add_convert_parser(verbs)
    add_synth_parser(verbs)
    add_recipe_parser(verbs)

    fit = verbs.add_parser("overfit", help="sanity check: fit one synthetic pair with the official objective")
    fit.add_argument("--model", default="tiny", help=model_help)
    fit.add_argument("--steps", type=int, default=300)
    fit.add_argument("--lr", type=float, default=1e-3)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--lora", default=None, help="LoRA preset (default: full fine-tuning)")
    fit.add_argument("--lora-rank", type=int, default=16)
    fit.add_argument("--out", type=Path, default=Path("runs/overfit"))
    fit.set_defaults(func=cmd_overfit)

    exp = verbs.add_parser("export", help="export a checkpoint or model for transformers, peft or Sam3VideoModel")
    exp.add_argument("--checkpoint", help="training checkpoint (.ckpt) written by `sam3-adapt fit`, or its run "
                                          "folder (the best checkpoint, else last.ckpt)")
    exp.add_argument("--model", help=model_help + "; instead of --checkpoint")
    exp.add_argument("--adapter", help="LoRA adapter directory to merge (with --model)")
    exp.add_argument("--adapter-only", action="store_true", help="write the LoRA adapter alone (peft format)")
    exp.add_argument("--video", action="store_true", help="write a Sam3VideoModel whose detector is the adapted model")
    exp.add_argument("--base-video", help="video checkpoint directory whose tracker to keep (with --video)")
    exp.add_argument("--data", default="unspecified", help="training data, for the model card")
    exp.add_argument("--recipe", default="unspecified", help="recipe, for the model card")
    exp.add_argument("--metrics", help="JSON file of metrics, for the model card")
    exp.add_argument("--out", type=Path, required=True)
    exp.set_defaults(func=cmd_export)

    ev = verbs.add_parser("eval", help="cgF1, pmF1, IL_MCC (SA-Co) and COCO AP of predictions, or of a model")
    ev.add_argument("--gt", action="append", required=True, type=Path,
                    help="ground-truth JSON (SA-Co or COCO); repeat for the oracle over several SA-Co files")
    ev.add_argument("--pred", type=Path, help="COCO-results JSON to score (joined by file_name and phrase when "
                                              "its entries carry them, else by id)")
    ev.add_argument("--model", help=MODEL_HELP + "; predicts on the ground truth's images and phrases, then scores")
    ev.add_argument("--images", type=Path, metavar="DIR",
                    help="with --model: the folder the ground truth's file_names are relative to (default its folder)")
    ev.add_argument("--threshold", type=float, default=0.05,
                    help="with --model: keep instances with score > this (default 0.05, as fit's validation; cgF1 "
                         "counts scores >= 0.5 only)")
    ev.add_argument("--top-k", type=int, default=100, help="with --model: instances per image and phrase (100)")
    ev.add_argument("--device", default=None, help="with --model: torch device (default cuda if available)")
    ev.add_argument("--official-text-prompt", action="store_true", help=argparse.SUPPRESS)
    ev.add_argument("--pred-out", type=Path, help="with --model: where to write the predictions "
                                                  "(default predictions.json beside --out)")
    add_category_arguments(ev)
    ev.add_argument("--iou-type", choices=("segm", "bbox"), default="segm")
    ev.add_argument("--format", choices=("saco", "coco"), default=None, help="override format detection")
    ev.add_argument("--out", type=Path, default=Path("metrics.json"))
    ev.add_argument("--report", type=Path, help="markdown report (a PNG plot is written beside it)")
    ev.set_defaults(func=cmd_eval)

    info = verbs.add_parser("info", help="parameter counts per component and LoRA preset")
    info.add_argument("--model", default="sam3-random", help=model_help)
    info.add_argument("--lora-rank", type=int, default=16)
    info.set_defaults(func=cmd_info)
    return parser


LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")


def _run_lightning(argv: list[str]) -> int:
    """`fit`, `validate` and `test` go to LightningCLI (its own parser: --config, --print_config, overrides)."""
    from adapt.training.cli import TrainingInterrupted, run_lightning_cli

    try:
        run_lightning_cli(argv)
    except Sam3AdaptError as err:
        print(f"sam3-adapt: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingInterrupted as err:
        print(f"sam3-adapt: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sam3-adapt` console script."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        return _run_lightning(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Sam3AdaptError as err:
        print(f"sam3-adapt: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (FileNotFoundError, json.JSONDecodeError) as err:
        print(f"sam3-adapt: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
