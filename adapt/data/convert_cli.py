"""The `convert` verb: turn semantic masks, YOLO labels or public datasets' layouts into a COCO instance file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .problems import ON_ERROR

if TYPE_CHECKING:
    from .convert_semantic import ConversionStats


def add_convert_parser(verbs: argparse._SubParsersAction) -> None:
    """Add `convert semantic`, `yolo` and the dataset-layout kinds to a command line's verbs."""
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
    _add_domain_parsers(kinds)


def _add_domain_parsers(kinds: argparse._SubParsersAction) -> None:
    """`convert binary-masks`, `mvtec`, `foodseg103` and `uecfoodpix`: public datasets' native layouts."""

    def common(parser: argparse.ArgumentParser, threshold: bool = False) -> None:
        parser.add_argument("--out", type=Path, required=True, help="COCO JSON to write (in the image folder or above)")
        parser.add_argument("--min-area", type=int, default=1, help="drop components smaller than this many pixels")
        if threshold:
            parser.add_argument("--threshold", type=int, default=127, help="foreground: mask pixel > this (0..254)")
        parser.add_argument("--on-error", choices=ON_ERROR, default="stop", help="stop at bad images, or skip them")

    binary = kinds.add_parser("binary-masks", help="images + binary masks (Kvasir-SEG, ISIC) -> one phrase")
    binary.add_argument("--root", type=Path, required=True, help="dataset folder")
    binary.add_argument("--images", default="images", help="image folder, relative to --root (default images)")
    binary.add_argument("--masks", default="masks", help="mask folder, relative to --root (default masks)")
    binary.add_argument("--phrase", required=True, help="the class name, e.g. 'polyp' or 'skin lesion'")
    binary.add_argument("--mask-suffix", default="", help="mask stem = image stem + this (ISIC: _segmentation)")
    common(binary, threshold=True)
    binary.set_defaults(func=cmd_convert_binary_masks)

    mvtec = kinds.add_parser("mvtec", help="MVTec AD test split -> one phrase per defect type, good = negatives")
    mvtec.add_argument("--root", type=Path, required=True, help="MVTec AD folder (holding <category>/test/)")
    mvtec.add_argument("--category", action="append", help="only this category (repeatable; default all)")
    mvtec.add_argument("--phrase-template", default="{defect}",
                       help="phrase of a defect type, from {defect} and {category} (underscores as spaces)")
    mvtec.add_argument("--no-good", action="store_true", help="leave out the test/good images (negatives)")
    common(mvtec, threshold=True)
    mvtec.set_defaults(func=cmd_convert_mvtec)

    for name, what in (("foodseg103", "FoodSeg103 (Images/img_dir, Images/ann_dir, category_id.txt)"),
                       ("uecfoodpix", "UECFoodPix Complete (<split>/img, <split>/mask red channel, category.txt)")):
        food = kinds.add_parser(name, help=f"{what} -> one instance per connected component")
        food.add_argument("--root", type=Path, required=True, help="dataset folder")
        food.add_argument("--split", choices=("train", "test"), default="train")
        common(food)
        food.set_defaults(func=cmd_convert_food, food=name)


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


def cmd_convert_binary_masks(args: argparse.Namespace) -> int:
    """Run `convert binary-masks` and print one summary line."""
    from .convert_domains import convert_binary_masks

    stats = convert_binary_masks(args.root / args.images, args.root / args.masks, args.phrase, args.out,
                                 mask_suffix=args.mask_suffix, threshold=args.threshold, min_area=args.min_area,
                                 on_error=args.on_error)  # fmt: skip
    print(summary(stats, args.out))
    return 0


def cmd_convert_mvtec(args: argparse.Namespace) -> int:
    """Run `convert mvtec` and print one summary line."""
    from .convert_domains import convert_mvtec

    stats = convert_mvtec(args.root, args.out, categories=args.category, phrase_template=args.phrase_template,
                          include_good=not args.no_good, threshold=args.threshold, min_area=args.min_area,
                          on_error=args.on_error)  # fmt: skip
    print(summary(stats, args.out))
    return 0


def cmd_convert_food(args: argparse.Namespace) -> int:
    """Run `convert foodseg103` or `convert uecfoodpix` and print one summary line."""
    from .convert_domains import convert_foodseg103, convert_uecfoodpix

    convert = convert_foodseg103 if args.food == "foodseg103" else convert_uecfoodpix
    stats = convert(args.root, args.out, split=args.split, min_area=args.min_area, on_error=args.on_error)
    print(summary(stats, args.out))
    return 0


def summary(stats: ConversionStats, out: Path) -> str:
    """One line: what was written, and how many images were skipped (with the first reason)."""
    line = f"wrote {out}: {stats.images} images, {stats.instances} instances"
    if stats.skipped:
        line += f"; skipped {stats.skipped} images with problems (first: {stats.problems[0]})"
    return line
