"""Train the demo's image generator: a small unconditional DDPM of the demo's unlabelled pool images, from scratch.

The demo recipe's gen arm pseudo-labels generated images (its `generator:` section). A real recipe would name a
text-to-image model from the Hub; the demo, offline on a CPU, names this one: a diffusers `UNet2DModel` trained
with a `DDPMScheduler` on exactly the images the demo's `pool:` section renders (400 toy images of coloured
shapes on grey noise, learnt at 48 px), and saved as a `DDIMPipeline` (deterministic 50-step sampling) by
`save_pretrained`. It knows no words: it draws images of the domain, and the teacher labels them like pool images.
Run once; the result ships in `recipes/demo_gen/`:

    python -m recipes.toy_diffusion --out recipes/demo_gen      # the shipped weights: ~20 min on 1 core

Next to the weights: `training.json` (settings, steps, loss curve, seconds, machine) and `samples.png` (16
samples, 4 x 4, seeds 0-15) for a person to look at.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image

from sam3_model.atomic import atomic_write_text
from sam3_model.info import cpu_model


@dataclass
class DiffusionTraining:
    """How the demo's generator is trained (the values that shipped are recorded in training.json)."""

    recipe: str = "demo"  # whose `pool:` images are learnt (rendered by its toy source, in memory)
    size: int = 48  # training (and sampling) side in pixels: the pool's images are resized to it when they differ
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # one UNet level each: 48 -> 24 -> 12 px
    layers_per_block: int = 1
    norm_num_groups: int = 8
    steps: int = 3000
    minutes: float = 35.0  # wall-clock cap (the machine's speed varies); the cosine schedule assumes `steps`
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 100
    ema_power: float = 0.75  # EMA warm-up: decay 1 - (1 + step)^-power (diffusers' EMAModel), capped at 0.9999
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # the cosine schedule: better than linear for small images
    prediction: str = "v_prediction"  # what the UNet predicts: "v_prediction" (at high noise it predicts the clean
    #                                   image, so colours hold: "epsilon" drifted every background's tint) or "epsilon"
    snr_gamma: float = 5.0  # Min-SNR loss weighting (Hang et al. 2023: min(SNR, gamma) / SNR, / (SNR + 1) for v);
    #                         0: plain MSE
    sample_steps: int = 50  # DDIM steps of the shipped pipeline's sample grid (and the recipe's default)
    preview_every: int = 0  # steps between sample grids written to the work folder (0: none)
    seed: int = 0
    threads: int = 1


def pool_images(recipe_name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The recipe's pool images, rendered by its own source: (N, H, W, 3) uint8 and the pool's source config."""
    from recipes.config import load_recipe
    from synth.ontology import load_ontology, ontology_from_mapping

    recipe = load_recipe(recipe_name)
    if recipe.pool is None:
        raise SystemExit(f"recipe {recipe_name} has no pool: section to learn from")
    ontology = (load_ontology(recipe.ontology) if isinstance(recipe.ontology, str)
                else ontology_from_mapping(recipe.ontology, f"recipe {recipe.name}: ontology"))
    source = recipe.pool.source.build(ontology)
    produced = source.produce(source.plan())
    images = np.stack([np.asarray(p.image.convert("RGB")) for p in produced])
    return images, asdict(recipe.pool.source)


class ToyDiffusion(L.LightningModule):
    """A UNet2DModel learning to denoise what a DDPMScheduler noised (v or epsilon objective), with an EMA copy."""

    def __init__(self, cfg: DiffusionTraining, size: int) -> None:
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.training_utils import EMAModel

        super().__init__()
        self.cfg = cfg
        n = len(cfg.block_out_channels)
        self.unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3,
                                block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                                down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                                norm_num_groups=cfg.norm_num_groups)  # attention only in the middle block (12 x 12)
        self.noise = DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.beta_schedule,
                                   prediction_type=cfg.prediction)
        self.ema = EMAModel(self.unet.parameters(), decay=0.9999, use_ema_warmup=True, power=cfg.ema_power)
        self.losses: list[float] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One denoising step's MSE on a batch of (B, 3, H, W) images in [-1, 1], half of them mirrored."""
        (clean,) = batch
        flip = torch.rand(clean.shape[0]) < 0.5
        clean = torch.where(flip[:, None, None, None], clean.flip(-1), clean)
        noise = torch.randn_like(clean)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (clean.shape[0],))
        noisy = self.noise.add_noise(clean, noise, t)
        target = noise if self.cfg.prediction == "epsilon" else self.noise.get_velocity(clean, noise, t)
        predicted = self.unet(noisy, t).sample  # (B, 3, H, W)
        per_image = (predicted - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
        if self.cfg.snr_gamma > 0:  # easy low-noise steps weigh less: converges faster
            alpha_bar = self.noise.alphas_cumprod[t]  # (B,)
            snr = alpha_bar / (1 - alpha_bar)
            per_image = per_image * snr.clamp(max=self.cfg.snr_gamma) / (snr + (self.cfg.prediction != "epsilon"))
        loss = per_image.mean()
        self.losses.append(float(loss.detach()))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Move the EMA copy towards the new weights."""
        self.ema.step(self.unet.parameters())

    def configure_optimizers(self) -> Any:
        """AdamW with a linear warm-up and a cosine decay to zero over `steps`."""
        import math

        cfg = self.cfg
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=0.0)

        def factor(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            done = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * done))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def pipeline(self) -> Any:
        """A DDIMPipeline of the EMA weights (a copy: training weights untouched)."""
        import copy

        from diffusers import DDIMPipeline, DDIMScheduler

        unet = copy.deepcopy(self.unet).eval()
        self.ema.copy_to(unet.parameters())
        return DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(self.noise.config))


class Preview(L.Callback):
    """Write a sample grid every `every` steps (to watch the samples form)."""

    def __init__(self, every: int, folder: Path, steps: int) -> None:
        self.every, self.folder, self.steps = every, folder, steps

    def on_train_batch_end(self, trainer: L.Trainer, module: ToyDiffusion, *args: Any) -> None:
        """Sample when the step count is a multiple of `every`."""
        if self.every and trainer.global_step % self.every == 0:
            grid = sample_grid(module.pipeline(), self.steps)
            grid.save(self.folder / f"preview-{trainer.global_step:06d}.png")


def sample_grid(pipe: Any, steps: int, n: int = 16, columns: int = 4) -> Image.Image:
    """`n` samples (seeds 0..n-1, one CPU generator each) pasted into a grid."""
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        images = pipe(batch_size=n, generator=[torch.Generator("cpu").manual_seed(i) for i in range(n)],
                      num_inference_steps=steps, eta=0.0).images
    w, h = images[0].size
    rows = (n + columns - 1) // columns
    grid = Image.new("RGB", (columns * w + (columns - 1) * 2, rows * h + (rows - 1) * 2), (255, 255, 255))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * (w + 2), (i // columns) * (h + 2)))
    return grid


def loss_summary(losses: list[float], parts: int = 10) -> dict[str, Any]:
    """The loss curve in a few numbers: mean of the first and last 100 steps and of `parts` equal stretches."""
    array = np.asarray(losses, np.float64)
    chunks = np.array_split(array, min(parts, len(array))) if len(array) else []
    return {"first_100": round(float(array[:100].mean()), 4) if len(array) else None,
            "last_100": round(float(array[-100:].mean()), 4) if len(array) else None,
            "per_tenth": [round(float(c.mean()), 4) for c in chunks]}


def machine() -> dict[str, Any]:
    """What trained it: CPU model, cores, torch threads, versions."""
    import diffusers

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}


def train_generator(out: str | Path, cfg: DiffusionTraining, work: str | Path | None = None) -> dict[str, Any]:
    """Render the recipe's pool, train the DDPM, save a DDIMPipeline, its report and sample grid to `out`."""
    from adapt.training.trainer import build_trainer

    torch.set_num_threads(cfg.threads)
    out = Path(out)
    work = Path(work) if work else out.parent / f"{out.name}-work"
    work.mkdir(parents=True, exist_ok=True)
    pixels, pool = pool_images(cfg.recipe)  # (N, H, W, 3) uint8
    if cfg.size % 2 ** (len(cfg.block_out_channels) - 1):
        raise SystemExit(f"size {cfg.size}: the UNet needs a side it can halve {len(cfg.block_out_channels) - 1} times")
    if pixels.shape[1:3] != (cfg.size, cfg.size):
        pixels = np.stack([np.asarray(Image.fromarray(p).resize((cfg.size, cfg.size), Image.LANCZOS)) for p in pixels])
    data = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W) in [-1, 1]

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = ToyDiffusion(cfg, cfg.size)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=cfg.batch_size,
                                         shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    callbacks = [Preview(cfg.preview_every, work, cfg.sample_steps)] if cfg.preview_every else []
    trainer = build_trainer(default_root_dir=str(work), accelerator="cpu", devices=1, max_steps=cfg.steps,
                            max_epochs=-1, max_time={"minutes": cfg.minutes}, gradient_clip_val=1.0,
                            precision="32-true", logger=False, enable_checkpointing=False, quiet=True,
                            callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start

    pipe = module.pipeline()
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    start = time.perf_counter()
    sample_grid(pipe, cfg.sample_steps).save(out / "samples.png")
    sample_seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.suffix == ".safetensors")
    report = {"training": asdict(cfg), "pool": pool, "images": list(pixels.shape),
              "parameters": sum(p.numel() for p in module.unet.parameters()), "weights_bytes": size,
              "steps_done": trainer.global_step, "train_seconds": round(seconds, 1),
              "loss": loss_summary(module.losses),
              "samples": {"file": "samples.png", "seeds": list(range(16)), "ddim_steps": cfg.sample_steps,
                          "seconds": round(sample_seconds, 1)},
              "machine": machine()}
    atomic_write_text(out / "training.json", json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    """`python -m recipes.toy_diffusion --out DIR [--minutes M] [--steps N]`."""
    from recipes.toy_base import script_arguments

    out, work, cfg = script_arguments(__doc__.splitlines()[0], DiffusionTraining,
                                      "where previews and Lightning's files go (default: OUT-work)", argv)
    report = train_generator(out, cfg, work)
    print(json.dumps({k: report[k] for k in ("steps_done", "train_seconds", "loss", "weights_bytes")}, indent=2))


if __name__ == "__main__":
    main()
