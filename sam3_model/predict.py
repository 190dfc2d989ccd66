"""Promptable concept segmentation: images x concept prompts -> instances (masks, boxes, scores), and COCO JSON.

The image is encoded once; its features are shared by every prompt (expanded to batches of prompts), as in the
official SAM 3, whose backbone runs once per image. Post-processing follows the official demo: score =
sigmoid(logit) * sigmoid(presence), kept when > threshold, masks resized bilinearly to the original image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import Sam3Model, Sam3Processor
from transformers.models.sam3.modeling_sam3 import Sam3ImageSegmentationOutput, Sam3VisionEncoderOutput

from .atomic import atomic_write_text
from .errors import ConfigError
from .images import ImageInput, load_image
from .loading import DEFAULT_HUB_ID, load_model
from .prompting import prompt_tensors, prompt_text, validate_prompt
from .records import RLE, ConceptPrompt, ConceptResult, Instance, encode_mask, mask_area

PromptInput = Union[ConceptPrompt, str]
_MASK_CHUNK = 16  # masks resized to full resolution at a time (bounds memory on large images)


def _expand_vision(vision: Sam3VisionEncoderOutput, n: int) -> Sam3VisionEncoderOutput:
    """Features of one image viewed as a batch of n (no copy)."""
    expand = lambda ts: tuple(t.expand(n, *t.shape[1:]) for t in ts)  # noqa: E731
    return Sam3VisionEncoderOutput(
        last_hidden_state=vision.last_hidden_state.expand(n, *vision.last_hidden_state.shape[1:]),
        fpn_hidden_states=expand(vision.fpn_hidden_states),
        fpn_position_encoding=expand(vision.fpn_position_encoding),
    )


def _masks_to_rle(mask_logits: torch.Tensor, size_hw: tuple[int, int], threshold: float) -> list[RLE]:
    """(n, h, w) mask logits -> n RLEs of the original (H, W) image, resized bilinearly in chunks."""
    rles: list[RLE] = []
    for chunk in mask_logits.float().split(_MASK_CHUNK) if len(mask_logits) else ():
        resized = F.interpolate(chunk[None], size=size_hw, mode="bilinear", align_corners=False)[0]  # (c, H, W)
        rles += [encode_mask(m) for m in (resized.sigmoid() > threshold).cpu().numpy()]
    return rles


class ConceptSegmenter:
    """Find every instance of each concept prompt in each image with a `Sam3Model`.

    `threshold`: keep instances with score > threshold (0.5 like the official demo; 0 for COCO AP);
    `top_k`: at most this many instances per (image, prompt), best first; `prompt_batch_size`: prompts run
    together on one image's features; `official_text_prompt`: add the geometry CLS token to text-only prompts
    like the official model (see `prompting.prompt_tensors`); `mask_threshold`: on the mask probability;
    `progress`: a progress bar over images.
    """

    def __init__(
        self,
        model: Sam3Model,
        processor: Sam3Processor,
        *,
        threshold: float = 0.5,
        top_k: int | None = None,
        prompt_batch_size: int = 16,
        official_text_prompt: bool = False,
        mask_threshold: float = 0.5,
        progress: bool = False,
    ) -> None:
        if prompt_batch_size < 1:
            raise ConfigError(f"prompt_batch_size must be >= 1, got {prompt_batch_size}")
        if top_k is not None and top_k < 0:
            raise ConfigError(f"top_k must be >= 0 or None, got {top_k}")
        self.model, self.processor = model, processor
        self.threshold, self.top_k, self.mask_threshold = threshold, top_k, mask_threshold
        self.prompt_batch_size, self.official_text_prompt = prompt_batch_size, official_text_prompt
        self.progress = progress

    @classmethod
    def from_pretrained(
        cls,
        source: str = DEFAULT_HUB_ID,
        *,
        image_size: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **kwargs,
    ) -> ConceptSegmenter:
        """A segmenter around `load_model(source)` (preset, local directory or Hub id); kwargs go to `__init__`."""
        model, processor = load_model(source, image_size=image_size, dtype=dtype)
        return cls(model.to(device) if device is not None else model, processor, **kwargs)

    def __call__(
        self,
        images: Sequence[ImageInput],
        prompts: Sequence[PromptInput] | Sequence[Sequence[PromptInput]],
        image_ids: Sequence[int | str | Sequence[int | str]] | None = None,
    ) -> list[list[ConceptResult]]:
        """Per image, one `ConceptResult` per prompt.

        `prompts`: one list applied to every image, or one list per image. `image_ids`: one id per image
        (default: its index), or per image a list of one id per prompt (e.g. SA-Co image-phrase pair ids).
        """
        per_image = self._prompts_per_image(images, prompts)
        ids = list(image_ids) if image_ids is not None else list(range(len(images)))
        if len(ids) != len(images):
            raise ConfigError(f"{len(ids)} image_ids for {len(images)} images; give one per image")
        was_training = self.model.training
        self.model.eval()
        try:
            pairs = tqdm(list(enumerate(zip(images, per_image))), desc="segment", unit="image",
                         disable=not self.progress or len(images) < 2)
            return [self._segment_image(image, i, image_prompts, ids[i]) for i, (image, image_prompts) in pairs]
        finally:
            self.model.train(was_training)

    @staticmethod
    def _prompts_per_image(images: Sequence[ImageInput], prompts: Sequence) -> list[list[ConceptPrompt]]:
        """Normalise `prompts` to one list of `ConceptPrompt` per image."""
        as_prompt = lambda p: ConceptPrompt(text=p) if isinstance(p, str) else p  # noqa: E731
        nested = len(prompts) > 0 and all(isinstance(p, (list, tuple)) for p in prompts)
        if not nested:
            return [[as_prompt(p) for p in prompts] for _ in images]
        if len(prompts) != len(images):
            raise ConfigError(f"{len(prompts)} prompt lists for {len(images)} images; give one list per image")
        return [[as_prompt(p) for p in image_prompts] for image_prompts in prompts]

    def _segment_image(
        self, image: ImageInput, index: int, prompts: list[ConceptPrompt], image_id: int | str | Sequence
    ) -> list[ConceptResult]:
        """Encode one image once, then run its prompts in batches sharing the features."""
        where = str(image) if isinstance(image, (str, os.PathLike)) else f"image {index}"
        pil = load_image(image, where)
        size_hw = (pil.height, pil.width)
        for k, prompt in enumerate(prompts):
            validate_prompt(prompt, size_hw, f"{where}, prompt {k}")
        ids = list(image_id) if isinstance(image_id, (list, tuple)) else [image_id] * len(prompts)
        if len(ids) != len(prompts):
            raise ConfigError(f"{where}: {len(ids)} image ids for {len(prompts)} prompts; give one per prompt")
        if not prompts:
            return []
        device, dtype = self.model.device, self.model.dtype
        pixel_values = self.processor(images=[pil], return_tensors="pt")["pixel_values"]  # (1, 3, S, S)
        # Text-only prompts run apart from box prompts unless every prompt gets the geometry CLS token anyway,
        # so that a prompt's result never depends on what it is batched with.
        has_boxes = [bool(p.boxes_xyxy_px) for p in prompts]
        groups = [list(range(len(prompts)))] if self.official_text_prompt else [
            [k for k, b in enumerate(has_boxes) if not b], [k for k, b in enumerate(has_boxes) if b]
        ]
        results: dict[int, ConceptResult] = {}
        with torch.inference_mode():
            vision = self.model.get_vision_features(pixel_values=pixel_values.to(device, dtype))
            for group in groups:
                for start in range(0, len(group), self.prompt_batch_size):
                    chunk = group[start : start + self.prompt_batch_size]
                    inputs = prompt_tensors(self.processor, [prompts[k] for k in chunk], [size_hw],
                                            self.official_text_prompt, device)
                    if "input_boxes" in inputs:
                        inputs["input_boxes"] = inputs["input_boxes"].to(dtype)
                    out = self.model(vision_embeds=_expand_vision(vision, len(chunk)), **inputs)
                    for row, k in enumerate(chunk):
                        results[k] = self._result(out, row, ids[k], prompts[k], size_hw)
        return [results[k] for k in range(len(prompts))]

    def _result(
        self, out: Sam3ImageSegmentationOutput, row: int, image_id: int | str, prompt: ConceptPrompt,
        size_hw: tuple[int, int],
    ) -> ConceptResult:
        """Row `row` of a batch of model outputs -> the instances of one prompt in the original image."""
        height, width = size_hw
        presence = out.presence_logits[row].float().sigmoid()  # (1,)
        scores = out.pred_logits[row].float().sigmoid() * presence  # (Q,)
        keep = torch.nonzero(scores > self.threshold).squeeze(1)
        keep = keep[scores[keep].argsort(descending=True)][: self.top_k]  # (n,) best first
        scale = scores.new_tensor([width, height, width, height])
        boxes_xyxy_px = torch.minimum(out.pred_boxes[row, keep].float() * scale, scale).clamp(min=0)  # (n, 4)
        masks = _masks_to_rle(out.pred_masks[row, keep], size_hw, self.mask_threshold)
        instances = [Instance(mask=m, box_xyxy_px=tuple(b), score=s)
                     for m, b, s in zip(masks, boxes_xyxy_px.tolist(), scores[keep].tolist())]
        return ConceptResult(image_id=image_id, prompt=prompt, presence=float(presence), instances=instances,
                             image_size=size_hw)


def to_coco_results(
    results: Sequence[Sequence[ConceptResult]],
    convention: str = "saco",
    category_ids: dict[str, int] | None = None,
) -> list[dict]:
    """Flatten results into a COCO results list: {image_id, category_id, score, bbox, segmentation, area}.

    `segmentation` is the full-image compressed RLE with str counts. Conventions:
    - "saco" (SA-Co/Gold, Silver): every image-phrase pair is its own image, so `image_id` is the result's
      `image_id`, which the caller sets to the pair id; `category_id` is 1; `bbox` is xywh NORMALISED by the
      original image (W, H), like SA-Co GT; `area` is the mask's fraction of the image.
    - "coco": `image_id` is the image's id; `category_id` is `category_ids[phrase]` ("visual" for box-only); `bbox` is xywh in pixels;
      `area` is the mask's pixel count.
    """
    if convention not in ("saco", "coco"):
        raise ConfigError(f"unknown results convention {convention!r}: choose 'saco' or 'coco'")
    if convention == "coco" and category_ids is None:
        raise ConfigError("the 'coco' convention needs category_ids, a mapping phrase -> category id")
    entries = []
    for result in (r for image_results in results for r in image_results):
        height, width = result.image_size
        if convention == "coco":
            phrase = prompt_text(result.prompt)  # "visual" for box-only prompts, as the processor names them
            if phrase not in category_ids:
                raise ConfigError(f"image {result.image_id}: phrase {phrase!r} has no category id")
            category_id, norm = category_ids[phrase], np.ones(4)
        else:
            category_id, norm = 1, np.array([width, height, width, height], dtype=float)
        area_norm = 1.0 if convention == "coco" else float(height * width)
        for inst in result.instances:
            x0, y0, x1, y1 = inst.box_xyxy_px
            bbox = (np.array([x0, y0, x1 - x0, y1 - y0]) / norm).tolist()  # xywh, px or normalised
            entries.append({"image_id": result.image_id, "category_id": category_id, "score": float(inst.score),
                            "bbox": bbox, "segmentation": inst.mask, "area": mask_area(inst.mask) / area_norm})
    return entries


def write_coco_results(
    results: Sequence[Sequence[ConceptResult]],
    path: str | os.PathLike,
    convention: str = "saco",
    category_ids: dict[str, int] | None = None,
) -> Path:
    """Write `to_coco_results(...)` as JSON atomically (temp file in the same folder, then `os.replace`)."""
    entries = to_coco_results(results, convention, category_ids)
    return atomic_write_text(path, json.dumps(entries))
