"""Concept prompts -> `Sam3Model` inputs: validation, tokenisation and exemplar-box encoding.

A prompt is a noun phrase, exemplar boxes (xyxy pixels of the original image, label 1 positive / 0 negative),
or both. Prompts with boxes but no phrase use the processor's convention, the text "visual".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_convert
from transformers import Sam3Processor

from .errors import PromptError
from .records import ConceptPrompt

BOX_PAD_LABEL = -10  # transformers' padding label: the box is masked out of every attention
VISUAL_TEXT = "visual"  # phrase used by the processor for box-only prompts
TEXT_LENGTH = 32  # SAM 3's text context length
_BOX_TOLERANCE_PX = 1e-3


def prompt_text(prompt: ConceptPrompt) -> str:
    """The phrase the model sees: the prompt's text, or "visual" for a box-only prompt."""
    return prompt.text if prompt.text is not None and prompt.text.strip() else VISUAL_TEXT


def validate_prompt(prompt: ConceptPrompt, image_size_hw: tuple[int, int], where: str) -> None:
    """Raise `PromptError` (one line naming `where`) if `prompt` cannot be run on an image of `image_size_hw`."""
    if not isinstance(prompt, ConceptPrompt):
        raise PromptError(f"{where}: expected a ConceptPrompt or a str phrase, got {type(prompt).__name__}")
    if prompt.text is not None and not isinstance(prompt.text, str):
        raise PromptError(f"{where}: the phrase must be a str, got {type(prompt.text).__name__}")
    boxes, labels = list(prompt.boxes_xyxy_px), list(prompt.box_labels)
    if not boxes and (prompt.text is None or not prompt.text.strip()):
        raise PromptError(f"{where}: empty phrase and no exemplar boxes; give a noun phrase or at least one box")
    if len(labels) != len(boxes):
        raise PromptError(f"{where}: {len(boxes)} boxes but {len(labels)} box labels; give one label per box")
    if any(label not in (0, 1) for label in labels):
        raise PromptError(f"{where}: box labels must be 1 (positive) or 0 (negative), got {labels}")
    height, width = image_size_hw
    tol = _BOX_TOLERANCE_PX
    for k, box in enumerate(boxes):
        name = f"{where}, box {k} {tuple(box)!r}"
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise PromptError(f"{name}: a box is four numbers (x0, y0, x1, y1) in pixels") from None
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise PromptError(f"{name}: coordinates must be finite numbers")
        if x1 <= x0 or y1 <= y0:
            raise PromptError(f"{name}: zero or negative area; boxes are (x0, y0, x1, y1) with x0 < x1, y0 < y1")
        if min(x0, y0) < -tol or max(x0, x1) > width + tol or max(y0, y1) > height + tol:
            raise PromptError(f"{name}: outside the {width}x{height} (WxH) image; boxes are in original pixels")


def prompt_tensors(
    processor: Sam3Processor,
    prompts: Sequence[ConceptPrompt],
    image_sizes_hw: Sequence[tuple[int, int]],
    official_text_prompt: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenised phrases and normalised exemplar boxes for N prompts (`image_sizes_hw`: one per prompt, or one).

    Returns `input_ids`, `attention_mask` (N, 32) and, when any prompt has boxes, `input_boxes` (N, K, 4) cxcywh
    normalised by the image size and `input_boxes_labels` (N, K), padding entries being zero boxes labelled -10.
    Note that a text-only prompt batched with box prompts then runs the geometry encoder (it gains the geometry
    CLS token). With `official_text_prompt`, a batch without boxes gets one padding box per prompt so that every
    prompt gains that token, as in the official SAM 3 (which always runs the geometry encoder).
    """
    n = len(prompts)
    if len(image_sizes_hw) not in (1, n):
        raise ValueError(f"image_sizes_hw has {len(image_sizes_hw)} entries for {n} prompts; give 1 or {n}")
    tokens = processor.tokenizer(
        [prompt_text(p) for p in prompts], padding="max_length", max_length=TEXT_LENGTH, truncation=True,
        return_tensors="pt",
    )
    out = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}  # (N, 32) each
    if any(p.boxes_xyxy_px for p in prompts):
        sizes_hw = torch.tensor(list(image_sizes_hw), dtype=torch.float32).expand(n, 2)  # (N, 2)
        scale = sizes_hw.flip(-1).repeat(1, 2)  # (N, 4): W, H, W, H
        boxes = [torch.tensor(p.boxes_xyxy_px, dtype=torch.float32).reshape(-1, 4) / s for p, s in zip(prompts, scale)]
        labels = [torch.tensor(p.box_labels, dtype=torch.long).reshape(-1) for p in prompts]
        boxes_xyxy_norm = pad_sequence(boxes, batch_first=True)  # (N, K, 4) xyxy, normalised; padding rows 0
        out["input_boxes_labels"] = pad_sequence(labels, batch_first=True, padding_value=BOX_PAD_LABEL)  # (N, K)
        out["input_boxes"] = box_convert(boxes_xyxy_norm, "xyxy", "cxcywh")  # (N, K, 4) cxcywh, normalised
    elif official_text_prompt:
        out["input_boxes"] = torch.zeros(n, 1, 4)  # (N, 1, 4): one padding box -> only the geometry CLS token
        out["input_boxes_labels"] = torch.full((n, 1), BOX_PAD_LABEL, dtype=torch.long)  # (N, 1)
    return {k: v.to(device) for k, v in out.items()} if device is not None else out
