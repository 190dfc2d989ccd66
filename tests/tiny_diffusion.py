"""Tiny random Stable Diffusion pipelines built from configs (offline), saved for loading by path."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_sd(out_dir: str | Path, inpaint: bool = False, seed: int = 0) -> Path:
    """Build a seeded tiny StableDiffusion(Inpaint)Pipeline (64x64 images), `save_pretrained` it; return the dir."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline, \
        UNet2DConditionModel  # fmt: skip
    from transformers import CLIPTextConfig, CLIPTextModel

    from sam3_model.tokenizer import build_offline_tokenizer

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=32, sample_size=64)  # 2 blocks: 64x64 <-> 4x32x32
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=9 if inpaint else 4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=32)
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=build_offline_tokenizer(77), unet=unet,
               scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None,
               feature_extractor=None, requires_safety_checker=False)
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


def build_tiny_unconditional(out_dir: str | Path, kind: str = "ddim", size: int = 16, seed: int = 0) -> Path:
    """Build a seeded tiny unconditional DDIMPipeline or DDPMPipeline (`size` px), `save_pretrained` it."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
    if kind == "ddim":
        pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100))
    else:
        pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100))
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out
