"""The `convert` verb: turn semantic masks or YOLO labels into a COCO instance file the readers take."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .problems import ON_ERROR

if TYPE_CHECKING:
    from .convert_semantic import ConversionStats


def add_convert_parser(verbs: argparse._SubParsersAction) -> None:
    """Add `convert semantic` and `convert yolo` to a command line's verbs."""
    convert = verbs.add_parser("convert", help="convert semantic masks or YOLO labels to a COCO instance file")
    kinds = convert.add_subparsers(dest="convert_kind", required=True)

    sem = kinds.add_parser("semantic", help="class-index PNG masks -> one instance per connected component")
    sem.add_argument("--images", type=Path, required=True, help="image folder")
    sem.add_argument("--masks", type=Path, required=True, help="mask folder (PNG per image, same relative stem)")
    sem.add_argument("--classes", type=Path, required=True, help="YAML/JSON map of pixel value to class name")
    sem.add_argument("--out", type=Path, required=True, help="COCO JSON to write (in the image folder or above)")
    sem.add_argument("--min-area", type=int, default=1, help="drop components smaller than this many pixels")
    sem.add_argument("--on-error", choices=ON_ERROR, default="stop", help="stop at bad images, or skip them")
    sem.set_defaults(func=cmd_convert_semantic)

    yolo = kinds.add_parser("yolo", help="YOLO segmentation (or detection) labels -> COCO instances")
    yolo.add_argument("--images", type=Path, required=True, help="image folder")
    yolo.add_argument("--labels", type=Path, required=True, help="label folder (.txt per image, same relative stem)")
    yolo.add_argument("--names", type=Path, required=True, help="YOLO data.yaml (its names: list or mapping)")
    yolo.add_argument("--out", type=Path, required=True, help="COCO JSON to write (in the image folder or above)")
    yolo.add_argument("--on-error", choices=ON_ERROR, default="stop", help="stop at bad images, or skip them")
    yolo.set_defaults(func=cmd_convert_yolo)


def cmd_convert_semantic(args: argparse.Namespace) -> int:
    """Run `convert semantic` and print one summary line."""
    from .convert_semantic import convert_semantic_masks

    stats = convert_semantic_masks(args.images, args.masks, args.classes, args.out, min_area=args.min_area,
                                   on_error=args.on_error)  # fmt: skip
    print(summary(stats, args.out))
    return 0


def cmd_convert_yolo(args: argparse.Namespace) -> int:
    """Run `convert yolo` and print one summary line."""
    from .convert_yolo import convert_yolo

    stats = convert_yolo(args.images, args.labels, args.names, args.out, on_error=args.on_error)
    print(summary(stats, args.out))
    return 0


def summary(stats: ConversionStats, out: Path) -> str:
    """One line: what was written, and how many images were skipped (with the first reason)."""
    line = f"wrote {out}: {stats.images} images, {stats.instances} instances"
    if stats.skipped:
        line += f"; skipped {stats.skipped} images with problems (first: {stats.problems[0]})"
    return line
