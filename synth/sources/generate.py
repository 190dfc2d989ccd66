"""Text-to-image (or inpainting into pool backgrounds) with any diffusers pipeline, one image per task.

Note: generating images goes beyond what the SAM 3 paper tested. Its synthetic (SYN) data are real, unlabelled
photos labelled by the model-in-the-loop engine (the `pool` source here); generated images are an extension for
domains where such photos are scarce. Generated content is not guaranteed to show the concept (or only it), so
this source gives no exact labels: the teacher and verifiers label its images like any pool image. Inpainting
records the painted region in the provenance, for inspection and for filters downstream.

An unconditional pipeline (one whose `__call__` takes no prompt: `DDPMPipeline`, `DDIMPipeline`, e.g. a small
model trained on the domain's own images) draws images of the domain, not of one concept: set `num_images`
instead of `images_per_concept`; its tasks carry no concept and no prompt, and its images are drawn at the
model's own size, then resized to height x width.

Every task carries its own seed; each image is drawn with its own CPU `torch.Generator` seeded from it (CPU
generators give the same initial noise on every device), so a task yields the same image whether produced alone
or in a batch. (On CPU the pixels are identical; on a GPU, kernels chosen per batch size can change low bits, so
a resumed run equals an uninterrupted one when its shards are produced with the same batch composition.)
"""

from __future__ import annotations

import inspect
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from sam3_model.configs import MODEL
from sam3_model.errors import ConfigError, ImageError, ModelLoadError

from .base import ProducedImage, SourceSkip, Task
from .pool import PoolConfig, describe_task, list_pool, open_pool_image

DEFAULT_CONTEXTS = [
    "on a table",
    "on the floor",
    "outdoors",
    "indoors",
    "in a kitchen",
    "on a shelf",
    "in a garden",
    "on the street",
    "in a room with natural light",
    "close-up",
    "in a cluttered scene",
    "from above",
]


@dataclass
class InpaintConfig:
    """Paint the concept into a region of a real background instead of generating the whole image."""

    backgrounds: PoolConfig  # the images painted into (cropped to the output's aspect ratio, then resized)
    region: tuple[float, float] = (0.25, 0.6)  # min and max side of the square region painted, as a fraction of
    #                                            the output's shorter side (position drawn at random)
    strength: float = 0.99  # how much of the region is re-noised (1: ignore what was there)
    prompt_template: str = "a photo of {concept}"  # the inpainting prompt (the background is the context)


@dataclass
class GenerateConfig:
    """Which pipeline, which prompts, how many images of each concept (or of the domain, unconditionally)."""

    pipeline: str = field(metadata=MODEL)  # a diffusers pipeline id or local folder ("stabilityai/sdxl-turbo",
    #                "stabilityai/sd-turbo", "black-forest-labs/FLUX.1-schnell", ...)
    images_per_concept: int = 4  # images generated of each concept
    prompt_templates: list[str] = field(default_factory=lambda: ["a photo of {concept}, {context}"])  # "{concept}"
    #                                             required, "{context}" optional; one is drawn for each image
    contexts: list[str] = field(default_factory=lambda: list(DEFAULT_CONTEXTS))  # scene contexts, one drawn per image
    negative_prompt: str | None = None  # passed when the pipeline takes one (ignored at guidance_scale <= 1)
    steps: int = 4  # denoising steps (1-4 for turbo/schnell models, 25-50 for others)
    guidance_scale: float = 0.0  # classifier-free guidance (0 for turbo/schnell models, 5-7 for others)
    height: int = 512  # output height in pixels (a multiple of 8; 16 for FLUX)
    width: int = 512  # output width in pixels
    seed: int = 0  # every task's seed is derived from it, the concept and the image's number
    batch_size: int = 4  # images generated together
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # "auto": bfloat16 on cuda, float32 on cpu
    concepts: list[str] | None = None  # generate only these ontology concepts (None: all of them)
    inpaint: InpaintConfig | None = None  # paint into pool backgrounds instead (None: text-to-image)
    num_images: int | None = None  # for an unconditional pipeline (no prompt: DDPM, DDIM): images of the domain
    #                                to generate, instead of images_per_concept x concepts (None: it takes prompts)


def _safe(text: str, limit: int = 32) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:limit] or "concept"


def _resolve_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def _cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop `image` to the aspect ratio width:height, then resize to (width, height)."""
    w, h = image.size
    target = width / height
    if w / h > target:
        cw, ch = max(1, round(h * target)), h
    else:
        cw, ch = w, max(1, round(w / target))
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC)


class GenerateSource:
    """Generated images of the ontology's concepts, or of the domain from an unconditional pipeline (no exact
    labels)."""

    name = "generate"

    def __init__(self, config: GenerateConfig, ontology: Any) -> None:
        self.config = config
        self.ontology = ontology
        if config.concepts is not None:
            unknown = [c for c in config.concepts if c not in ontology]
            if unknown:
                raise ConfigError(f"generate: concepts {unknown} are not in the ontology; known: {ontology.names}")
        self.concepts: list[str] = list(config.concepts) if config.concepts is not None else list(ontology.names)
        if not config.prompt_templates:
            raise ConfigError("generate: prompt_templates is empty; give at least one, e.g. 'a photo of {concept}'")
        templates = list(config.prompt_templates)
        if config.inpaint is not None:
            templates.append(config.inpaint.prompt_template)
        for template in templates:
            if "{concept}" not in template:
                raise ConfigError(f"generate: prompt template {template!r} has no '{{concept}}'")
            try:
                template.format(concept="x", context="y")
            except (KeyError, IndexError, ValueError) as err:
                raise ConfigError(f"generate: prompt template {template!r} does not format ({err}); "
                                  "only {concept} and {context} are known") from None
        if not config.contexts:
            raise ConfigError("generate: contexts is empty; give at least one scene context")
        for name in ("images_per_concept", "steps", "height", "width", "batch_size"):
            if getattr(config, name) < (0 if name == "images_per_concept" else 1):
                raise ConfigError(f"generate: {name} must be positive, got {getattr(config, name)}")
        if config.num_images is not None:
            if config.num_images < 0:
                raise ConfigError(f"generate: num_images must be >= 0, got {config.num_images}")
            if config.inpaint is not None:
                raise ConfigError("generate: num_images (an unconditional pipeline) and inpaint exclude each other; "
                                  "inpainting paints a prompted concept: remove one of them")
            if config.concepts is not None:
                raise ConfigError("generate: num_images (an unconditional pipeline) draws the domain, not concepts; "
                                  "remove concepts or num_images")
        if config.inpaint is not None:
            lo, hi = config.inpaint.region
            if not 0 < lo <= hi <= 1:
                raise ConfigError(f"generate: inpaint.region must be [min, max] with 0 < min <= max <= 1, got "
                                  f"{list(config.inpaint.region)}")
            if not 0 < config.inpaint.strength <= 1:
                raise ConfigError(f"generate: inpaint.strength must be in (0, 1], got {config.inpaint.strength}")
        self.pipe: Any = None
        self.device = "cpu"
        self._call_params: set[str] = set()

    @property
    def unconditional(self) -> bool:
        """Whether the config asks for an unconditional pipeline (num_images set)."""
        return self.config.num_images is not None

    def plan(self) -> list[Task]:
        """images_per_concept tasks per concept: {"key", "concept", "prompt", "negative_prompt", "seed"} (with
        inpainting also "background" (a pool task) and "region_xyxy_px" in output pixels); unconditional:
        num_images tasks whose concept, prompt and negative_prompt are None."""
        cfg = self.config
        if cfg.num_images is not None:
            return [{"key": f"gen-any-{i:05d}", "concept": None, "prompt": None, "negative_prompt": None,
                     "seed": int(np.random.default_rng([cfg.seed, i]).integers(0, 2**31 - 1))}
                    for i in range(cfg.num_images)]
        pool = list_pool(cfg.inpaint.backgrounds) if cfg.inpaint is not None else []
        tasks = []
        for concept in self.concepts:
            concept_id = zlib.crc32(concept.encode("utf-8"))  # stable: other concepts do not shift this one's tasks
            for i in range(cfg.images_per_concept):
                rng = np.random.default_rng([cfg.seed, concept_id, i])
                context = cfg.contexts[int(rng.integers(len(cfg.contexts)))]
                template = cfg.prompt_templates[int(rng.integers(len(cfg.prompt_templates)))]
                seed = int(rng.integers(0, 2**31 - 1))
                task: Task = {"key": f"gen-{_safe(concept)}-{concept_id:08x}-{i:05d}", "concept": concept,
                              "prompt": template.format(concept=concept, context=context),
                              "negative_prompt": cfg.negative_prompt, "seed": seed}
                if cfg.inpaint is not None:
                    background = pool[int(rng.integers(len(pool)))]
                    side = int(round(rng.uniform(*cfg.inpaint.region) * min(cfg.height, cfg.width)))
                    side = max(8, min(side, cfg.height, cfg.width))
                    x0 = int(rng.integers(0, cfg.width - side + 1))
                    y0 = int(rng.integers(0, cfg.height - side + 1))
                    task["prompt"] = cfg.inpaint.prompt_template.format(concept=concept, context=context)
                    task["background"] = {k: v for k, v in background.items() if k != "key"}
                    task["region_xyxy_px"] = [x0, y0, x0 + side, y0 + side]
                tasks.append(task)
        return tasks

    def setup(self, device: str) -> None:
        """Load the pipeline onto `device`; `ModelLoadError` (one line) when it cannot be loaded, `ConfigError` when
        it takes a prompt and num_images is set, or takes none and num_images is not."""
        import torch  # noqa: F401 (diffusers needs it; imported here so the module imports without it)
        from diffusers import AutoPipelineForInpainting, AutoPipelineForText2Image, DiffusionPipeline

        cfg = self.config
        dtype = _resolve_dtype(cfg.dtype, device)
        auto = AutoPipelineForInpainting if cfg.inpaint is not None else AutoPipelineForText2Image
        try:
            if self.unconditional:  # the auto classes know prompted pipelines only
                pipe = DiffusionPipeline.from_pretrained(cfg.pipeline, torch_dtype=dtype)
            else:
                try:
                    pipe = auto.from_pretrained(cfg.pipeline, torch_dtype=dtype)
                except ValueError as err:
                    if "AutoPipeline can't find" not in str(err):
                        raise
                    pipe = DiffusionPipeline.from_pretrained(cfg.pipeline, torch_dtype=dtype)
            pipe = pipe.to(device)
        except Exception as err:  # noqa: BLE001 (hub, file, config and import errors of every kind)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ModelLoadError(f"generate: cannot load diffusers pipeline {cfg.pipeline!r} "
                                 f"({type(err).__name__}: {first})") from None
        call_params = set(inspect.signature(pipe.__call__).parameters)
        kind = type(pipe).__name__
        if "prompt" not in call_params and not self.unconditional:
            raise ConfigError(f"generate: {cfg.pipeline!r} is an unconditional {kind} (it takes no prompt): set "
                              "num_images, the images of the domain to generate, instead of images_per_concept")
        if "prompt" in call_params and self.unconditional:
            raise ConfigError(f"generate: num_images is for unconditional pipelines, and {cfg.pipeline!r} is a "
                              f"{kind} that takes a prompt: use images_per_concept instead")
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.device = device
        self._call_params = call_params

    def produce(self, tasks: Sequence[Task]) -> list[ProducedImage | SourceSkip]:
        """Generate each task's image, batch_size at a time, each from its own seeded generator."""
        if self.pipe is None:
            self.setup(self.device)
        results: dict[str, ProducedImage | SourceSkip] = {}
        ready: list[tuple[Task, Image.Image | None]] = []
        for task in tasks:
            background = None
            if self.config.inpaint is not None:
                try:
                    image, _ = open_pool_image(task["background"])
                except ImageError as err:
                    results[task["key"]] = SourceSkip(task["key"], str(err))
                    continue
                background = _cover(image, self.config.width, self.config.height)
            ready.append((task, background))
        size = self.config.batch_size
        for start in range(0, len(ready), size):
            batch = ready[start:start + size]
            for (task, _), image in zip(batch, self._generate(batch)):
                results[task["key"]] = ProducedImage(task["key"], image, self._provenance(task))
        return [results[task["key"]] for task in tasks]

    def _generate(self, batch: list[tuple[Task, Image.Image | None]]) -> list[Image.Image]:
        import torch

        cfg = self.config
        generators = [torch.Generator("cpu").manual_seed(int(t["seed"])) for t, _ in batch]
        if self.unconditional:  # drawn at the model's size, resized to height x width
            with torch.inference_mode():
                images = self.pipe(batch_size=len(batch), generator=generators, num_inference_steps=cfg.steps,
                                   output_type="pil").images
            return [im.convert("RGB") if im.size == (cfg.width, cfg.height)
                    else im.convert("RGB").resize((cfg.width, cfg.height), Image.BICUBIC) for im in images]
        kwargs: dict[str, Any] = dict(
            prompt=[t["prompt"] for t, _ in batch], height=cfg.height, width=cfg.width,
            num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, output_type="pil", generator=generators)
        negatives = [t.get("negative_prompt") for t, _ in batch]
        if any(n is not None for n in negatives) and "negative_prompt" in self._call_params:
            kwargs["negative_prompt"] = [n or "" for n in negatives]
        if cfg.inpaint is not None:
            kwargs["image"] = [bg for _, bg in batch]
            kwargs["mask_image"] = [self._region_mask(t) for t, _ in batch]
            if "strength" in self._call_params:
                kwargs["strength"] = cfg.inpaint.strength
        with torch.inference_mode():
            images = self.pipe(**kwargs).images
        return [im.convert("RGB") for im in images]

    def _region_mask(self, task: Task) -> Image.Image:
        x0, y0, x1, y1 = task["region_xyxy_px"]
        mask = np.zeros((self.config.height, self.config.width), np.uint8)
        mask[y0:y1, x0:x1] = 255
        return Image.fromarray(mask)  # uint8 (H, W): mode "L"

    def _provenance(self, task: Task) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {
            "kind": "generated", "pipeline": cfg.pipeline, "pipeline_class": type(self.pipe).__name__,
            "prompt": task["prompt"], "negative_prompt": task.get("negative_prompt"), "seed": int(task["seed"]),
            "steps": cfg.steps, "guidance_scale": None if self.unconditional else cfg.guidance_scale,
            "concept": task["concept"], "unconditional": self.unconditional, "height": cfg.height, "width": cfg.width}
        if cfg.inpaint is not None:
            out.update(background=describe_task(task["background"]), region_xyxy_px=list(task["region_xyxy_px"]),
                       strength=cfg.inpaint.strength)
        return out
