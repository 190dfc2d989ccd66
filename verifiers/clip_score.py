"""MV by crop-text scoring with CLIP or SigLIP: does the masked crop look more like the phrase than its rivals?

A cheap proxy of the paper's mask verifier (SAM 3 §D.4), after X-Paste: crop the instance's box (padded), paint
the pixels outside the mask a flat colour, pad to a square with the same colour, and score the crop against the
phrase, the item's hard negatives (ontology siblings) and a few generic contrast texts. CLIP (softmax over the
texts) and SigLIP (independent sigmoid per text) are both supported; the kind is read from the model config.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from sam3_model.errors import ModelLoadError
from sam3_model.records import Instance, decode_mask

from .base import Verdict, VerifyItem, thresholded
from .geometric import mask_box

_ARTICLE = re.compile(r"^(a|an|the)\s", re.IGNORECASE)


def fill_template(template: str, phrase: str) -> str:
    """`template` with `phrase` filled in, without doubling an article ("a photo of a the cat" -> "... the cat")."""
    if _ARTICLE.match(phrase):
        template = re.sub(r"\b(a|an)\s+\{phrase\}", "{phrase}", template)
    return template.format(phrase=phrase)


def masked_crop(
    image: Image.Image, inst: Instance, padding: float, fill: tuple[int, int, int]
) -> Image.Image | None:
    """The instance's box padded by `padding` of its size, pixels outside the mask painted `fill`, padded to a
    square with `fill`; None when neither the box nor the mask has any area."""
    mask = decode_mask(inst.mask).astype(bool)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask size {list(mask.shape)} != image size {[image.height, image.width]}")
    if not mask.any():
        return None
    x0, y0, x1, y1 = inst.box_xyxy_px
    if x1 - x0 < 1 or y1 - y0 < 1:  # a degenerate box: fall back to the mask's own
        x0, y0, x1, y1 = mask_box(mask)
    pad_x, pad_y = padding * (x1 - x0), padding * (y1 - y0)
    left, top = max(0, int(np.floor(x0 - pad_x))), max(0, int(np.floor(y0 - pad_y)))
    right, bottom = min(image.width, int(np.ceil(x1 + pad_x))), min(image.height, int(np.ceil(y1 + pad_y)))
    if right <= left or bottom <= top:
        return None
    pixels = np.asarray(image.convert("RGB"))[top:bottom, left:right].copy()
    pixels[~mask[top:bottom, left:right]] = fill
    side = max(right - left, bottom - top)
    square = np.empty((side, side, 3), dtype=np.uint8)
    square[:] = fill
    oy, ox = (side - pixels.shape[0]) // 2, (side - pixels.shape[1]) // 2
    square[oy : oy + pixels.shape[0], ox : ox + pixels.shape[1]] = pixels
    return Image.fromarray(square)


def _pooled(features) -> torch.Tensor:
    """Projected embeddings from get_*_features (a tensor, or an output with `pooler_output` in transformers 5)."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


class ClipMaskVerifier:
    """MV: score each instance's masked crop against [phrase] + item.negatives + `contrast_phrases`.

    Every text goes through `prompt_template`. accept_score is the phrase's softmax probability over the item's
    texts (CLIP) or its sigmoid probability (SigLIP); the verdict is "accept" when the phrase is the top text
    and accept_score >= `threshold`, else "reject" naming the text that won. Crops run `batch_size` at a time;
    each distinct text is encoded once per call.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        name: str = "clip",
        threshold: float = 0.5,
        prompt_template: str = "a photo of a {phrase}",
        contrast_phrases: Sequence[str] = ("an object", "background"),
        batch_size: int = 32,
        padding: float = 0.1,
        fill: tuple[int, int, int] = (124, 116, 104),
    ) -> None:
        for attr in ("get_text_features", "get_image_features", "logit_scale"):
            if not hasattr(model, attr):
                raise ModelLoadError(f"{type(model).__name__} is not a CLIP/SigLIP dual encoder (no {attr})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.processor, self.name = model.eval(), processor, name
        self.threshold, self.prompt_template = threshold, prompt_template
        self.contrast_phrases, self.batch_size = tuple(contrast_phrases), batch_size
        self.padding, self.fill = padding, tuple(int(c) for c in fill)
        self.sigmoid = str(getattr(model.config, "model_type", "")).startswith("siglip")

    @classmethod
    def from_config(cls, config: Any) -> ClipMaskVerifier:
        """The verifier a `verifiers.configs.ClipConfig` describes."""
        return cls.from_pretrained(config.model, threshold=config.threshold, prompt_template=config.prompt_template,
                                   contrast_phrases=tuple(config.contrast_phrases), batch_size=config.batch_size)

    @property
    def torch_module(self) -> Any:
        """The model the data engine moves to its device."""
        return self.model

    @classmethod
    def from_pretrained(
        cls, model_id: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None, **kw
    ) -> ClipMaskVerifier:
        """A verifier around `AutoModel` / `AutoProcessor.from_pretrained(model_id)` (a CLIPModel or SiglipModel)."""
        from transformers import AutoModel, AutoProcessor

        try:
            model = AutoModel.from_pretrained(model_id, dtype=dtype) if dtype else AutoModel.from_pretrained(model_id)
            processor = AutoProcessor.from_pretrained(model_id)
        except Exception as err:  # noqa: BLE001 - any loading failure is the user's model id or files
            first = (str(err).strip().splitlines() or [""])[0]
            message = f"{model_id}: cannot load a CLIP/SigLIP model ({type(err).__name__}: {first})"
            raise ModelLoadError(message) from None
        if device is not None:
            model = model.to(device)
        return cls(model, processor, **kw)

    def texts(self, item: VerifyItem) -> list[str]:
        """The item's texts, phrase first, without repeats."""
        return list(dict.fromkeys([item.phrase, *item.negatives, *self.contrast_phrases]))

    @torch.inference_mode()
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        prompts = [fill_template(self.prompt_template, t) for t in texts]
        kwargs = dict(padding=True, truncation=True)
        if self.sigmoid:  # SigLIP pools the last token: it was trained on texts padded to the full length
            kwargs = dict(padding="max_length", truncation=True,
                          max_length=self.model.config.text_config.max_position_embeddings)
        embeds = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.processor(text=prompts[start : start + self.batch_size], return_tensors="pt", **kwargs)
            tokens = {k: v.to(self.model.device) for k, v in tokens.items()}
            embeds.append(_pooled(self.model.get_text_features(**tokens)).float())
        embeds = torch.cat(embeds).cpu()
        return embeds / embeds.norm(dim=-1, keepdim=True)

    @torch.inference_mode()
    def _encode_images(self, crops: list[Image.Image]) -> torch.Tensor:
        embeds = []
        for start in range(0, len(crops), self.batch_size):
            inputs = self.processor(images=crops[start : start + self.batch_size], return_tensors="pt")
            inputs = {k: v.to(self.model.device, self.model.dtype) if v.is_floating_point() else
                      v.to(self.model.device) for k, v in inputs.items()}
            embeds.append(_pooled(self.model.get_image_features(**inputs)).float())
        embeds = torch.cat(embeds).cpu()
        return embeds / embeds.norm(dim=-1, keepdim=True)

    @torch.inference_mode()
    def probabilities(self, items: Sequence[VerifyItem]) -> list[list[np.ndarray | None]]:
        """Per item, per instance: the probability of each of `texts(item)` (None for an empty crop)."""
        crops, where = [], []
        for i, item in enumerate(items):
            for j, inst in enumerate(item.instances):
                try:
                    crop = masked_crop(item.image, inst, self.padding, self.fill)
                except ValueError as err:
                    raise ValueError(f"{item.key or item.phrase}, instance {j}: {err}") from None
                if crop is not None:
                    crops.append(crop)
                    where.append((i, j))
        out: list[list[np.ndarray | None]] = [[None] * len(item.instances) for item in items]
        if not crops:
            return out
        vocab = list(dict.fromkeys(t for item in items for t in self.texts(item)))
        column = {t: k for k, t in enumerate(vocab)}
        logits = self._encode_images(crops) @ self._encode_texts(vocab).T  # (crops, texts) cosine
        logits = logits * self.model.logit_scale.float().exp().cpu()
        if self.sigmoid:
            logits = logits + self.model.logit_bias.float().cpu()
        for row, (i, j) in enumerate(where):
            item_logits = logits[row, [column[t] for t in self.texts(items[i])]]
            probs = item_logits.sigmoid() if self.sigmoid else item_logits.softmax(-1)
            out[i][j] = probs.numpy()
        return out

    def verify_masks(self, items: Sequence[VerifyItem]) -> list[list[Verdict]]:
        """One verdict per instance of every item."""
        verdicts = []
        for item, item_probs in zip(items, self.probabilities(items)):
            texts = self.texts(item)
            verdicts.append([self._verdict(texts, probs) for probs in item_probs])
        return verdicts

    def _verdict(self, texts: list[str], probs: np.ndarray | None) -> Verdict:
        if probs is None:
            return Verdict(self.name, "reject", 1.0, 0.0, "empty mask: nothing to crop")
        phrase_p, top = float(probs[0]), int(np.argmax(probs))
        kind = "sigmoid" if self.sigmoid else "softmax"
        if top != 0:
            winner = float(probs[top])
            return Verdict(self.name, "reject", 1.0 - phrase_p, phrase_p,
                           f"{texts[top]!r} outscores {texts[0]!r} ({winner:.2f} vs {phrase_p:.2f}, {kind})")
        runner = f", next {texts[int(np.argsort(probs)[-2])]!r} {np.sort(probs)[-2]:.2f}" if len(probs) > 1 else ""
        verdict = Verdict(self.name, "accept", phrase_p, phrase_p,
                          f"{texts[0]!r} tops {len(texts)} texts ({phrase_p:.2f}{runner}, {kind})")
        return thresholded(verdict, self.threshold)
