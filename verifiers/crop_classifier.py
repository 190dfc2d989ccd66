"""A small mask verifier trained on human-verified labels: does this masked crop show the phrase?

The paper trains its verifiers on human verification labels (SAM 3 §D.4); this is that idea at toy scale. Each
labelled object (a mask in an image, the phrases it is an instance of, the phrases it is known not to be) becomes
a crop around its box, resized to `crop_size`, with the mask as a fourth channel. A small CNN learns one sigmoid
per phrase of its vocabulary (`CropClassifierModule`, trained by a Lightning `Trainer` on the CPU); unknown
(phrase, object) combinations are left out of the loss. Background crops (no object) teach it to reject masks of
nothing. As an MV verifier it accepts an instance when the probability of
its pair's phrase is at least `threshold`; a phrase outside its vocabulary is accepted with a reason saying so
(it cannot judge it), so the verifier never silently drops data it knows nothing about.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError, ModelLoadError
from sam3_model.records import RLE, decode_mask

from .base import Verdict, VerifyItem
from .crop_settings import CropClassifierConfig
from .geometric import mask_box

CONFIG_NAME = "crop_classifier.json"
WEIGHTS_NAME = "crop_classifier.safetensors"


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

    @property
    def torch_module(self) -> Any:
        """The network the data engine moves to its device."""
        return self.net

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


class CropBatches(Dataset):
    """The training batches of every epoch, in order: step i's (crops, targets, known) of one `batch_size` batch.

    The plan is drawn up front from one generator seeded with `seed`: each epoch a random permutation of the
    crops split into batches, and for each batch which crops are flipped horizontally (p 0.5), so the batches do
    not depend on how (or how far ahead) a loader fetches them.
    """

    def __init__(self, crops: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, batch_size: int,
                 epochs: int, seed: int) -> None:
        self.crops, self.targets, self.known = crops, targets, known  # (N, 4, S, S), (N, P), (N, P)
        generator = torch.Generator().manual_seed(seed)
        self.plan: list[tuple[torch.Tensor, torch.Tensor]] = []  # (B,) crop indices, (B,) bool flips
        for _ in range(epochs):
            order = torch.randperm(len(crops), generator=generator)
            for batch in order.split(batch_size):
                self.plan.append((batch, torch.rand(len(batch), generator=generator) < 0.5))

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 4, S, S) crops (some flipped), (B, P) targets, (B, P) known-label mask of step `step`."""
        index, flip = self.plan[step]
        x = self.crops[index]
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)  # horizontal flips keep every toy label
        return x, self.targets[index], self.known[index]


class CropClassifierModule(L.LightningModule):
    """Trains a `CropNet`: BCE over the known (phrase, crop) labels only, AdamW with OneCycleLR over `total_steps`."""

    def __init__(self, net: CropNet, lr: float, total_steps: int, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.net, self.lr, self.total_steps, self.weight_decay = net, lr, total_steps, weight_decay
        self.last_loss = torch.zeros(())  # loss of the latest step

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Mean BCE over the batch's known labels."""
        x, targets, known = batch  # (B, 4, S, S), (B, P), (B, P)
        per = F.binary_cross_entropy_with_logits(self.net(x), targets, reduction="none")  # (B, P)
        loss = (per * known).sum() / known.sum().clamp(min=1)
        self.last_loss = loss.detach()
        return loss

    def configure_optimizers(self) -> dict:
        """AdamW and a OneCycleLR stepped after every optimizer step."""
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, self.lr, total_steps=self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@contextlib.contextmanager
def _quiet_deterministic_lightning() -> Iterator[None]:
    """No Lightning banner lines or one-process warnings; restore the global torch flags a deterministic Trainer
    sets (deterministic algorithms, cuDNN benchmark, cuBLAS workspace), so later jobs in this process run as before."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = log.level
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                            ".*LeafSpec.*"):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        log.setLevel(level)
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark = flags[2]
        if flags[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = flags[3]


def train_crop_classifier(images: Sequence[tuple[Image.Image, Sequence[LabelledObject]]], phrases: Sequence[str],
                          config: CropClassifierConfig | None = None) -> tuple[CropClassifierVerifier, dict]:
    """Train on human-labelled objects; returns the verifier and a report (examples, final loss, train accuracy)."""
    cfg = config or CropClassifierConfig()
    crops, targets, known = build_training_set(images, phrases, cfg)  # (N, 4, S, S), (N, P), (N, P)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        net = CropNet(len(phrases), cfg.width)
    batches = CropBatches(crops, targets, known, cfg.batch_size, cfg.epochs, cfg.seed)
    steps = len(batches)  # epochs x ceil(N / batch_size)
    module = CropClassifierModule(net, cfg.lr, steps)
    net.train()
    with _quiet_deterministic_lightning():
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, deterministic=True)
        trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False, num_workers=0))
    verifier = CropClassifierVerifier(net, phrases, cfg)
    with torch.no_grad():
        correct = ((verifier.probabilities(crops) >= 0.5).float() == targets).float()
    accuracy = float((correct * known).sum() / known.sum().clamp(min=1))
    report = {"examples": len(crops), "phrases": list(phrases), "final_loss": round(float(module.last_loss), 4),
              "train_accuracy": round(accuracy, 4)}
    return verifier, report
