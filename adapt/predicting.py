"""The `predict` verb: images x concept prompts (phrases and/or exemplar boxes) -> COCO results JSON and overlays.

Boxes are x,y,w,h in pixels of the image (the COCO convention), converted to the (x0, y0, x1, y1) exemplar boxes
of `ConceptPrompt`; they refine the first --prompt, or form a box-only prompt (phrase "visual") when there is
none. Box coordinates belong to one image, so --box takes exactly one --image.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from sam3_model.atomic import atomic_write, atomic_write_text
from sam3_model.errors import ConfigError, PromptError
from sam3_model.formats import FormatProblem, check_phrase
from sam3_model.images import read_image_size
from sam3_model.loading import DEFAULT_HUB_ID
from sam3_model.presets import PRESETS
from sam3_model.records import ConceptPrompt

Box = tuple[float, float, float, float]
MODEL_HELP = (f"Hub id (default {DEFAULT_HUB_ID}), exported folder, peft adapter folder, training checkpoint (.ckpt), "
              f"fit or recipe run folder, or a random-weight preset ({', '.join(PRESETS)})")
_BOX_TOLERANCE_PX = 1e-3  # as sam3_model.prompting: a box may touch the image border up to rounding


def parse_box(text: str) -> tuple[Box, int]:
    """'x,y,w,h' (positive), 'x,y,w,h:pos' or 'x,y,w,h:neg' in pixels -> (box_xyxy_px, label 1 or 0)."""
    coords, _, polarity = text.partition(":")
    try:
        x, y, w, h = (float(v) for v in coords.split(","))
    except ValueError:
        raise PromptError(f"--box {text!r}: expected x,y,w,h in pixels (COCO convention), optionally followed "
                          "by :neg or :pos") from None
    if polarity not in ("", "pos", "neg"):
        raise PromptError(f"--box {text!r}: unknown polarity {polarity!r}; use :neg or :pos")
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise PromptError(f"--box {text!r}: coordinates must be finite numbers")
    if w <= 0 or h <= 0:
        raise PromptError(f"--box {text!r}: width and height must be positive (the box is x,y,w,h, not x0,y0,x1,y1)")
    return (x, y, x + w, y + h), 0 if polarity == "neg" else 1


def build_prompts(texts: Sequence[str], boxes: Sequence[tuple[Box, int]]) -> list[ConceptPrompt]:
    """One prompt per phrase, the exemplar boxes attached to the first (or alone, a box-only prompt)."""
    for text in texts:
        if not text.strip():
            raise PromptError(f"--prompt {text!r}: empty phrase; give a noun phrase such as 'red car'")
        try:
            check_phrase(text)
        except FormatProblem as err:
            raise PromptError(f"--prompt: {err}") from None
    seen = set()
    for text in texts:
        if text in seen:
            raise PromptError(f"--prompt {text!r} is given twice; each phrase gets one category id")
        seen.add(text)
    if not texts and not boxes:
        raise PromptError("nothing to find: give at least one --prompt TEXT or --box x,y,w,h")
    prompts = [ConceptPrompt(text=t) for t in texts]
    if boxes:
        exemplar = ConceptPrompt(text=texts[0] if texts else None, boxes_xyxy_px=[b for b, _ in boxes],
                                 box_labels=[label for _, label in boxes])
        prompts[:1] = [exemplar]
    return prompts


def overlay_paths(overlay: Path, n_images: int) -> list[Path]:
    """`overlay` itself for one image; `<stem>_<k><suffix>` beside it for image k of several."""
    if n_images == 1:
        return [overlay]
    return [overlay.with_name(f"{overlay.stem}_{k}{overlay.suffix}") for k in range(n_images)]


def _image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image file as displayed (EXIF orientation applied); `ImageError` if it is missing or bad."""
    width, height = read_image_size(path)
    return height, width


def _check_boxes_inside(texts: Sequence[str], boxes: Sequence[tuple[Box, int]], path: str) -> None:
    """Raise `PromptError` naming the --box text when a box leaves the image."""
    height, width = _image_size(path)
    tol = _BOX_TOLERANCE_PX
    for text, ((x0, y0, x1, y1), _) in zip(texts, boxes):
        if min(x0, y0) < -tol or x1 > width + tol or y1 > height + tol:
            raise PromptError(f"--box {text!r}: outside the {width}x{height} (WxH) image {path}; boxes are "
                              "x,y,w,h in pixels of the original image")


def _image_format(path: Path) -> str:
    """PIL's format name for the file extension of `path`; `ConfigError` when it has none."""
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ConfigError(f"--overlay {path}: unknown image extension {path.suffix!r}; use .png")
    return image_format


def save_image_atomic(image: Image.Image, path: Path) -> Path:
    """Save `image` through a temp file in the same folder and `os.replace` (never half-written)."""
    return atomic_write(path, lambda handle: image.save(handle, format=_image_format(path)))


def _device(name: str | None) -> str:
    """The --device to run on: as given (checked), else cuda when available, else cpu."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r}: CUDA is not available on this machine; use --device cpu")
    return name


def _segmenter(args: argparse.Namespace, threshold: float, top_k: int | None, purpose: str):
    """A `ConceptSegmenter` on whatever --model names (checkpoint, run folder, export, preset, Hub id)."""
    from adapt.model_source import load_for_inference
    from sam3_model.predict import ConceptSegmenter

    if top_k is not None and top_k < 0:  # checked before the (slow) model load
        raise ConfigError(f"--top-k {top_k}: top_k must be >= 0")
    loaded = load_for_inference(args.model, device=_device(args.device), purpose=purpose)
    return ConceptSegmenter(loaded.model, loaded.processor, threshold=threshold, top_k=top_k,
                            official_text_prompt=args.official_text_prompt, progress=False)


def cmd_predict(args: argparse.Namespace) -> int:
    """Find every instance of each prompt in each image; write COCO results JSON and optional overlays."""
    if args.gt is not None:
        if args.image or args.prompt or args.box:
            raise ConfigError("--gt takes the images and phrases from the ground truth: drop --image, --prompt "
                              "and --box (or drop --gt)")
        return _predict_on_truth(args)
    if not args.image:
        raise ConfigError("nothing to predict on: give --image PATH (with --prompt or --box), or --gt FILE")
    from adapt.overlay import render_overlay
    from sam3_model.images import load_image
    from sam3_model.predict import to_coco_results
    from sam3_model.prompting import prompt_text

    images: list[str] = list(args.image)  # as given: they are the results' file_name and image_id
    boxes = [parse_box(b) for b in args.box]
    prompts = build_prompts(args.prompt, boxes)
    if boxes and len(images) != 1:
        raise PromptError(f"--box is in pixels of one image, but {len(images)} --image were given; "
                          "run predict once per image to use exemplar boxes")
    overlays = overlay_paths(args.overlay, len(images)) if args.overlay else []
    if args.overlay:
        _image_format(args.overlay)
    for path in images:  # fail before the (slow) model load on a missing or unreadable file
        _image_size(path)
    if boxes:
        _check_boxes_inside(args.box, boxes, images[0])

    segmenter = _segmenter(args, args.threshold, args.top_k, "predict")
    category_ids = {prompt_text(p): k + 1 for k, p in enumerate(prompts)}
    phrases = {k: phrase for phrase, k in category_ids.items()}
    results = []
    entries: list[dict] = []
    for path in images:
        per_image = segmenter([path], prompts, image_ids=[str(path)])[0]
        results.append(per_image)
        for result in per_image:
            print(f"{path}\t{prompt_text(result.prompt)}\tinstances={len(result.instances)}\t"
                  f"presence={result.presence:.3f}")
        for entry in to_coco_results([per_image], convention="coco", category_ids=category_ids):
            entries.append({**entry, "phrase": phrases[entry["category_id"]], "file_name": str(path)})
    atomic_write_text(args.out, json.dumps(entries))
    print(f"wrote {args.out} ({len(entries)} results)")
    for path, per_image, overlay in zip(images, results, overlays):
        save_image_atomic(render_overlay(load_image(path, path), per_image), overlay)
        print(f"wrote {overlay}")
    return 0


def _predict_on_truth(args: argparse.Namespace) -> int:
    """`predict --gt`: the ground truth's images and phrases, results in its ids and box units."""
    from adapt.evaluation.on_truth import check_truth_images, predict_on_truth, truth_queries

    queries = truth_queries(args.gt, args.images, category_rules(args))
    check_truth_images(queries)  # before the (slow) model load
    for note in queries.notes:
        print(note, file=sys.stderr)
    segmenter = _segmenter(args, args.threshold, args.top_k, "predict")
    entries = predict_on_truth(segmenter, queries)
    atomic_write_text(args.out, json.dumps(entries))
    units = "pixels" if queries.format == "coco" else "normalised by the image size"
    print(f"wrote {args.out} ({len(entries)} results on {len(queries.images)} images, {queries.num_queries} "
          f"image-phrase queries; ids of {args.gt}, boxes {units})")
    return 0


def category_rules(args: argparse.Namespace):
    """The COCO category rules of --exclude-category and --keep-placeholder-categories."""
    from sam3_model.formats import CategoryRules

    return CategoryRules(exclude=tuple(args.exclude_category), keep_placeholders=args.keep_placeholder_categories)


def add_category_arguments(parser: argparse.ArgumentParser) -> None:
    """--exclude-category and --keep-placeholder-categories (the rules fit applies to the same COCO file)."""
    parser.add_argument("--exclude-category", action="append", default=[], metavar="NAME",
                        help="COCO category to leave out with its annotations (repeatable)")
    parser.add_argument("--keep-placeholder-categories", action="store_true",
                        help="keep Roboflow's root category and labelme's _background_ as phrases (left out by "
                             "default, as fit does)")


def add_predict_parser(verbs: argparse._SubParsersAction) -> None:
    """Register the `predict` verb on the CLI's subparsers."""
    model_help = MODEL_HELP
    pred = verbs.add_parser(
        "predict", help="find every instance of each concept (phrase and/or exemplar boxes) in images",
        description="Find every instance of each --prompt in each --image, or of a ground truth's phrases in its "
                    "images (--gt), and write COCO results JSON. Every result carries 'file_name' and 'phrase'. "
                    "With --image, image_id is the image path as given and category_id is 1..K in --prompt order; "
                    "with --gt, both are the ground truth's ids and bbox is in its unit (COCO pixels, SA-Co "
                    "normalised).",
    )
    pred.add_argument("--model", default=DEFAULT_HUB_ID, help=model_help)
    pred.add_argument("--image", action="extend", nargs="+", default=[], metavar="PATH",
                      help="image file; repeat (or list several) for more images")
    pred.add_argument("--gt", type=Path, metavar="FILE",
                      help="COCO or SA-Co ground truth: predict its phrases on its images, in its ids and box units")
    pred.add_argument("--images", type=Path, metavar="DIR",
                      help="with --gt: the folder its file_names are relative to (default: the file's folder)")
    add_category_arguments(pred)
    pred.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                      help="noun phrase to find; repeat for several (category ids 1..K in this order)")
    pred.add_argument("--box", action="append", default=[], metavar="x,y,w,h[:neg]",
                      help="exemplar box x,y,w,h in pixels of the image (COCO convention), positive unless "
                           "followed by :neg; repeat for several. Boxes refine the first --prompt, or form a "
                           "box-only prompt (phrase 'visual') without one; they need exactly one --image")
    pred.add_argument("--threshold", type=float, default=0.5,
                      help="keep instances with score > threshold (default 0.5; 0 for COCO AP)")
    pred.add_argument("--top-k", type=int, default=None, help="at most this many instances per image and prompt")
    pred.add_argument("--official-text-prompt", action="store_true",
                      help="add the geometry CLS token to text-only prompts, as the official SAM 3 does")
    pred.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    pred.add_argument("--out", type=Path, required=True, metavar="PREDS.JSON", help="write COCO results JSON here")
    pred.add_argument("--overlay", type=Path, metavar="OUT.PNG",
                      help="draw the instances over the image: with one --image, exactly this file; with "
                           "several, <stem>_<k>.png beside it for the image at index k (0-based)")
    pred.set_defaults(func=cmd_predict)
