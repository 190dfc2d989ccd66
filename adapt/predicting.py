"""Prediction from files: images x concept prompts (phrases and/or exemplar boxes), or a ground truth's own images
and phrases, -> COCO results JSON and overlays. `predict` is the `sam3-adapt predict` verb.

Boxes are x,y,w,h in pixels of the image (the COCO convention), converted to the (x0, y0, x1, y1) exemplar boxes
of `ConceptPrompt`; they refine the first --prompt, or form a box-only prompt (phrase "visual") when there is
none. Box coordinates belong to one image, so --box takes exactly one --image.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from sam3_model.atomic import atomic_write
from sam3_model.errors import ConfigError, PromptError
from sam3_model.formats import CategoryRules, FormatProblem, check_phrase, write_json_dataset
from sam3_model.images import read_image_size
from sam3_model.presets import DEFAULT_HUB_ID
from sam3_model.records import ConceptPrompt

Box = tuple[float, float, float, float]
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


def inference_segmenter(model: str, device: str | None, threshold: float, top_k: int | None, purpose: str,
                        official_text_prompt: bool = False):
    """A `ConceptSegmenter` on whatever `model` names (checkpoint, run folder, export, preset, Hub id)."""
    from adapt.model_source import load_for_inference
    from sam3_model.predict import ConceptSegmenter

    if top_k is not None and top_k < 0:  # checked before the (slow) model load
        raise ConfigError(f"--top_k {top_k}: top_k must be >= 0")
    loaded = load_for_inference(model, device=_device(device), purpose=purpose)
    return ConceptSegmenter(loaded.model, loaded.processor, threshold=threshold, top_k=top_k,
                            official_text_prompt=official_text_prompt, progress=False)


def predict(
    out: Path,
    image: list[str] | None = None,
    prompt: list[str] | None = None,
    box: list[str] | None = None,
    gt: Path | None = None,
    images: Path | None = None,
    model: str = DEFAULT_HUB_ID,
    threshold: float = 0.5,
    top_k: int | None = None,
    official_text_prompt: bool = False,
    device: str | None = None,
    overlay: Path | None = None,
    exclude_category: list[str] | None = None,
    keep_placeholder_categories: bool = False,
) -> None:
    """Find every instance of each concept in each image and write COCO results JSON (and overlays).

    Args:
        out: the COCO results JSON to write; every result carries `phrase` and `file_name`.
        image: image files; `image_id` and `file_name` of their results are the path as given.
        prompt: noun phrases to find (category ids 1..K in this order).
        box: exemplar boxes `x,y,w,h` in pixels of the image (COCO convention), `:neg` for a negative one; they
            refine the first prompt, or form a box-only prompt (phrase "visual"); they need exactly one image.
        gt: a COCO or SA-Co ground truth instead of image and prompt: its phrases on its images, the results in
            its ids and box unit (COCO pixels, SA-Co normalised).
        images: with gt, the folder its file_names are relative to (default: the file's folder).
        model: Hub id, exported or adapter folder, training checkpoint (.ckpt), fit or recipe run folder, or a
            random-weight preset (tiny, small, sam3-random).
        threshold: keep instances scoring above this (0 for COCO AP).
        top_k: at most this many instances per image and prompt.
        official_text_prompt: add the geometry CLS token to text-only prompts, as the official SAM 3 does.
        device: torch device (default: cuda when available, else cpu).
        overlay: draw the instances over the image: with one image, this file; with several, <stem>_<k>.png.
        exclude_category: with a COCO gt, categories left out with their annotations.
        keep_placeholder_categories: with a COCO gt, keep Roboflow's root category and labelme's _background_.
    """
    image, prompt, box = list(image or []), list(prompt or []), list(box or [])
    if gt is not None:
        if image or prompt or box:
            raise ConfigError("--gt takes the images and phrases from the ground truth: drop --image, --prompt "
                              "and --box (or drop --gt)")
        _predict_on_truth(out, gt, images, model, threshold, top_k, official_text_prompt, device,
                          category_rules(exclude_category, keep_placeholder_categories))
        return
    if not image:
        raise ConfigError("nothing to predict on: give --image PATH (with --prompt or --box), or --gt FILE")
    from adapt.overlay import render_overlay
    from sam3_model.images import load_image
    from sam3_model.predict import to_coco_results
    from sam3_model.prompting import prompt_text

    boxes = [parse_box(b) for b in box]
    prompts = build_prompts(prompt, boxes)
    if boxes and len(image) != 1:
        raise PromptError(f"--box is in pixels of one image, but {len(image)} --image were given; "
                          "run predict once per image to use exemplar boxes")
    overlays = overlay_paths(overlay, len(image)) if overlay else []
    if overlay:
        _image_format(overlay)
    for path in image:  # fail before the (slow) model load on a missing or unreadable file
        _image_size(path)
    if boxes:
        _check_boxes_inside(box, boxes, image[0])

    segmenter = inference_segmenter(model, device, threshold, top_k, "predict", official_text_prompt)
    category_ids = {prompt_text(p): k + 1 for k, p in enumerate(prompts)}
    phrases = {k: phrase for phrase, k in category_ids.items()}
    results = []
    entries: list[dict] = []
    for path in image:
        per_image = segmenter([path], prompts, image_ids=[str(path)])[0]
        results.append(per_image)
        for result in per_image:
            print(f"{path}\t{prompt_text(result.prompt)}\tinstances={len(result.instances)}\t"
                  f"presence={result.presence:.3f}")
        for entry in to_coco_results([per_image], convention="coco", category_ids=category_ids):
            entries.append({**entry, "phrase": phrases[entry["category_id"]], "file_name": str(path)})
    write_json_dataset(out, entries)
    print(f"wrote {out} ({len(entries)} results)")
    for path, per_image, target in zip(image, results, overlays):
        save_image_atomic(render_overlay(load_image(path, path), per_image), target)
        print(f"wrote {target}")


def _predict_on_truth(out: Path, gt: Path, images: Path | None, model: str, threshold: float, top_k: int | None,
                      official_text_prompt: bool, device: str | None, rules: CategoryRules) -> None:
    """`predict --gt`: the ground truth's images and phrases, results in its ids and box units."""
    from adapt.evaluation.on_truth import check_truth_images, predict_on_truth, truth_queries

    queries = truth_queries(gt, images, rules)
    check_truth_images(queries)  # before the (slow) model load
    for note in queries.notes:
        print(note, file=sys.stderr)
    segmenter = inference_segmenter(model, device, threshold, top_k, "predict", official_text_prompt)
    entries = predict_on_truth(segmenter, queries)
    write_json_dataset(out, entries)
    units = "pixels" if queries.format == "coco" else "normalised by the image size"
    print(f"wrote {out} ({len(entries)} results on {len(queries.images)} images, {queries.num_queries} "
          f"image-phrase queries; ids of {gt}, boxes {units})")


def category_rules(exclude_category: list[str] | None, keep_placeholder_categories: bool) -> CategoryRules:
    """The COCO category rules of --exclude_category and --keep_placeholder_categories (those of `fit`)."""
    return CategoryRules(exclude=tuple(exclude_category or ()), keep_placeholders=keep_placeholder_categories)
