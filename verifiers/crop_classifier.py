"""A small mask verifier trained on human-verified labels: does this masked crop show the phrase?

The paper trains its verifiers on human verification labels (SAM 3 §D.4); this is that idea at toy scale. Each
labelled object (a mask in an image, the phrases it is an instance of, the phrases it is known not to be) becomes
a crop around its box, resized to `crop_size`, with the mask as a fourth channel. A small CNN learns one sigmoid
per phrase of its vocabulary; unknown (phrase, object) combinations are left out of the loss. Background crops
(no object) teach it to reject masks of nothing. As an MV verifier it accepts an instance when the probability of
its pair's phrase is at least `threshold`; a phrase outside its vocabulary is accepted with a reason saying so
(it cannot judge it), so the verifier never silently drops data it knows nothing about.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError, ModelLoadError
from sam3_model.records import RLE, decode_mask

from .base import Verdict, VerifyItem
from .geometric import mask_box

CONFIG_NAME = "crop_classifier.json"
WEIGHTS_NAME = "crop_classifier.safetensors"


@dataclass
class CropClassifierConfig:
    """Crop geometry and training settings of the crop classifier."""

    crop_size: int = 32  # crops are resized to crop_size x crop_size
    margin: float = 0.15  # box enlarged by this fraction of its side on each side
    width: int = 32  # channels of the first conv (doubled twice)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    background_per_image: int = 1  # random background crops per image, negatives for every phrase
    threshold: float = 0.5  # accept when P(phrase) >= threshold
    seed: int = 0


@dataclass
class LabelledObject:
    """One object of a human-labelled image: its mask and what it is (and is not)."""

    mask: RLE
    positives: frozenset[str]  # phrases this object is an instance of
    negatives: frozenset[str] = field(default_factory=frozenset)  # phrases it is known not to be


class CropNet(nn.Module):
    """(N, 4, S, S) masked crops -> (N, P) phrase logits."""

    def __init__(self, num_phrases: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(4, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(4 * w, num_phrases)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(crops).flatten(1))


def masked_crop(image: np.ndarray, mask: np.ndarray, size: int, margin: float) -> torch.Tensor:
    """(H, W, 3) uint8 image and (H, W) mask -> (4, size, size) crop around the mask's box (RGB in [-1, 1], mask)."""
    h, w = mask.shape
    box = mask_box(mask) or (0.0, 0.0, float(w), float(h))
    bw, bh = box[2] - box[0], box[3] - box[1]
    x0, y0 = int(max(0, box[0] - margin * bw)), int(max(0, box[1] - margin * bh))
    x1, y1 = int(min(w, np.ceil(box[2] + margin * bw))), int(min(h, np.ceil(box[3] + margin * bh)))
    rgb = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1).float() / 127.5 - 1
    m = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1])).float()[None]
    both = torch.cat([rgb, m], dim=0)[None]  # (1, 4, h', w')
    return F.interpolate(both, size=(size, size), mode="bilinear", align_corners=False)[0]


def _background_mask(rng: np.random.Generator, occupied: np.ndarray) -> np.ndarray | None:
    """A random rectangle mostly off every object, or None when the image has no room."""
    h, w = occupied.shape
    for _ in range(10):
        bh, bw = int(rng.integers(max(2, h // 8), max(3, h // 3))), int(rng.integers(max(2, w // 8), max(3, w // 3)))
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        if occupied[y:y + bh, x:x + bw].mean() < 0.1:
            out = np.zeros((h, w), bool)
            out[y:y + bh, x:x + bw] = True
            return out
    return None


def build_training_set(images: Sequence[tuple[Image.Image, Sequence[LabelledObject]]], phrases: Sequence[str],
                       cfg: CropClassifierConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops (N, 4, S, S), targets (N, P) in {0, 1} and a loss mask (N, P): 1 where the label is known."""
    index = {p: i for i, p in enumerate(phrases)}
    rng = np.random.default_rng(cfg.seed)
    crops, targets, known = [], [], []
    for image, objects in images:
        pixels = np.asarray(image.convert("RGB"))
        occupied = np.zeros(pixels.shape[:2], bool)
        for obj in objects:
            mask = decode_mask(obj.mask).astype(bool)
            occupied |= mask
            t, k = torch.zeros(len(phrases)), torch.zeros(len(phrases))
            for p in obj.positives & index.keys():
                t[index[p]], k[index[p]] = 1, 1
            for p in obj.negatives & index.keys():
                k[index[p]] = 1
            if k.any():
                crops.append(masked_crop(pixels, mask, cfg.crop_size, cfg.margin))
                targets.append(t)
                known.append(k)
        for _ in range(cfg.background_per_image):
            background = _background_mask(rng, occupied)
            if background is not None:
                crops.append(masked_crop(pixels, background, cfg.crop_size, cfg.margin))
                targets.append(torch.zeros(len(phrases)))
                known.append(torch.ones(len(phrases)))
    if not crops:
        raise ConfigError("crop classifier: no labelled object of its phrases in the training images")
    return torch.stack(crops), torch.stack(targets), torch.stack(known)


class CropClassifierVerifier:
    """MV: accept an instance when the crop classifier gives its phrase a probability >= `threshold`."""

    def __init__(self, net: CropNet, phrases: Sequence[str], config: CropClassifierConfig,
                 name: str = "crop_classifier", threshold: float | None = None, batch_size: int = 256) -> None:
        self.net, self.phrases, self.config, self.name = net.eval(), list(phrases), config, name
        self.threshold = config.threshold if threshold is None else threshold
        self.batch_size = batch_size
        self._index = {p: i for i, p in enumerate(self.phrases)}

    @torch.no_grad()
    def probabilities(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 4, S, S) crops -> (N, P) phrase probabilities."""
        device = next(self.net.parameters()).device
        out = [torch.sigmoid(self.net(chunk.to(device))).cpu() for chunk in crops.split(self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.phrases))

    def verify_masks(self, items: Sequence[VerifyItem]) -> list[list[Verdict]]:
        """One verdict per instance of every item."""
        crops, owners = [], []
        for i, item in enumerate(items):
            if item.phrase not in self._index:
                continue
            pixels = np.asarray(item.image.convert("RGB"))
            for j, inst in enumerate(item.instances):
                crops.append(masked_crop(pixels, decode_mask(inst.mask).astype(bool), self.config.crop_size,
                                         self.config.margin))
                owners.append((i, j))
        probs = self.probabilities(torch.stack(crops)) if crops else torch.zeros(0, len(self.phrases))
        verdicts: list[list[Verdict | None]] = [[None] * len(item.instances) for item in items]
        for (i, j), row in zip(owners, probs):
            p = float(row[self._index[items[i].phrase]])
            ok = p >= self.threshold
            verdicts[i][j] = Verdict(self.name, "accept" if ok else "reject", p if ok else 1 - p, p,
                                     f"P({items[i].phrase!r}) = {p:.3f} {'>=' if ok else '<'} {self.threshold:.2f}")
        for i, item in enumerate(items):
            if item.phrase not in self._index:
                verdicts[i] = [Verdict(self.name, "accept", 1.0, 1.0, f"{item.phrase!r} is outside the classifier's "
                                       "vocabulary: not judged") for _ in item.instances]
        return verdicts  # type: ignore[return-value]

    def save(self, out: str | os.PathLike[str]) -> Path:
        """Write the weights and the phrase vocabulary to directory `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(out / WEIGHTS_NAME))
        info = {"phrases": self.phrases, "config": asdict(self.config)}
        atomic_write_text(out / CONFIG_NAME, json.dumps(info, indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], threshold: float | None = None) -> CropClassifierVerifier:
        """Load a classifier saved by `save` (weights are safetensors: nothing is unpickled)."""
        path = Path(path)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise ModelLoadError(f"{path}: no {CONFIG_NAME} and {WEIGHTS_NAME}; train a crop classifier first")
        info = json.loads((path / CONFIG_NAME).read_text())
        config = CropClassifierConfig(**info["config"])
        net = CropNet(len(info["phrases"]), config.width)
        net.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
        return cls(net, info["phrases"], config, threshold=threshold)


def train_crop_classifier(images: Sequence[tuple[Image.Image, Sequence[LabelledObject]]], phrases: Sequence[str],
                          config: CropClassifierConfig | None = None) -> tuple[CropClassifierVerifier, dict]:
    """Train on human-labelled objects; returns the verifier and a report (examples, final loss, train accuracy)."""
    cfg = config or CropClassifierConfig()
    crops, targets, known = build_training_set(images, phrases, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        net = CropNet(len(phrases), cfg.width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * max(1, -(-len(crops) // cfg.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=steps)
    net.train()
    loss = torch.zeros(())
    for _ in range(cfg.epochs):
        order = torch.randperm(len(crops), generator=generator)
        for batch in order.split(cfg.batch_size):
            x = crops[batch]
            flip = torch.rand(len(x), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)  # horizontal flips keep every toy label
            logits = net(x)
            per = F.binary_cross_entropy_with_logits(logits, targets[batch], reduction="none")
            loss = (per * known[batch]).sum() / known[batch].sum().clamp(min=1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    verifier = CropClassifierVerifier(net, phrases, cfg)
    with torch.no_grad():
        correct = ((verifier.probabilities(crops) >= 0.5).float() == targets).float()
    accuracy = float((correct * known).sum() / known.sum().clamp(min=1))
    report = {"examples": len(crops), "phrases": list(phrases), "final_loss": round(float(loss.detach()), 4),
              "train_accuracy": round(accuracy, 4)}
    return verifier, report
