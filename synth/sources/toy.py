"""A procedural toy domain: coloured, patterned shapes on a background, with exact masks, made in code.

For the CPU demo and the tests. A phrase is "[pattern] [colour] noun": any attribute optional, the noun required
(a shape, or "shape" for any), e.g. "square", "red square", "striped red square", "dotted shape". An object
matches a phrase iff every attribute the phrase names matches. Every ontology phrase (concepts and hard
negatives) must parse. Objects are drawn in order (later ones occlude earlier ones); a placement that would hide
more than half of an earlier object is rejected, so every object keeps a visible, non-empty mask. Each image's
labels are exact and exhaustive for every ontology phrase: a phrase with no matching object is an exact negative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from sam3_model.errors import ConfigError
from sam3_model.records import encode_mask

from .base import ExactInstance, ProducedImage, SourceSkip, Task

SHAPES = ("circle", "square", "triangle", "bar", "ring")
ANY_SHAPE = "shape"  # the noun that matches every shape ("red shape")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 85, 225),
    "yellow": (240, 215, 40),
    "orange": (245, 140, 25),
    "purple": (150, 60, 205),
    "cyan": (40, 205, 215),
}
PATTERNS = ("plain", "striped", "dotted")
PATTERN_SHADE = 0.4  # stripes and dots are the object's colour times this (darker)
MAX_HIDDEN = 0.5  # a placement may hide at most this fraction of an earlier object
PLACEMENT_TRIES = 20


def pattern_colour(colour: str) -> tuple[int, int, int]:
    """The colour of the stripes or dots of an object of `colour`."""
    return tuple(int(round(c * PATTERN_SHADE)) for c in COLOURS[colour])  # type: ignore[return-value]


def known_words() -> str:
    """The toy grammar's vocabulary, for error messages."""
    return (f"patterns: {', '.join(PATTERNS)}; colours: {', '.join(COLOURS)}; "
            f"nouns: {', '.join(SHAPES)}, {ANY_SHAPE}")


@dataclass(frozen=True)
class ToyQuery:
    """A parsed toy phrase: the attributes it names (None: any)."""

    shape: str | None = None
    colour: str | None = None
    pattern: str | None = None

    def matches(self, obj: ToyObject | Mapping[str, Any]) -> bool:
        """Whether an object has every attribute the phrase names."""
        get = obj.get if isinstance(obj, Mapping) else lambda k: getattr(obj, k)
        return all(want is None or get(attr) == want
                   for attr, want in (("shape", self.shape), ("colour", self.colour), ("pattern", self.pattern)))


def parse_toy_phrase(phrase: str) -> ToyQuery:
    """Parse "[pattern] [colour] noun" (modifiers in any order, each at most once); `ValueError` otherwise."""
    words = phrase.lower().split()
    if not words:
        raise ValueError("empty phrase")
    noun = words[-1]
    if noun not in SHAPES and noun != ANY_SHAPE:
        raise ValueError(f"{phrase!r} does not end with a shape noun")
    colour = pattern = None
    for word in words[:-1]:
        if word in COLOURS and colour is None:
            colour = word
        elif word in PATTERNS and pattern is None:
            pattern = word
        else:
            raise ValueError(f"{phrase!r}: unexpected word {word!r}")
    return ToyQuery(None if noun == ANY_SHAPE else noun, colour, pattern)


@dataclass
class ToyObject:
    """One rendered object: its attributes and its visible pixels."""

    shape: str
    colour: str
    pattern: str
    mask: np.ndarray  # (H, W) bool, the pixels of it still visible in the final image

    def attributes(self) -> dict[str, str]:
        """{"shape", "colour", "pattern"}."""
        return {"shape": self.shape, "colour": self.colour, "pattern": self.pattern}


@dataclass
class ToyConfig:
    """The toy domain's images: how many, how big, how busy."""

    num_images: int = 100  # images in the plan
    size: int | tuple[int, int] = 112  # side of a square image in pixels, or [height, width]
    objects: tuple[int, int] = (1, 4)  # min and max objects per image (fewer when placements keep failing)
    background: Literal["noise", "plain", "checker"] = "noise"  # smooth grey noise, one grey, or a grey checker
    seed: int = 0  # every image is drawn from (seed, index)
    min_object: float = 0.12  # smallest object size, as a fraction of the image's shorter side
    max_object: float = 0.3  # largest object size, as a fraction of the image's shorter side
    concept_focus: float = 0.5  # probability that an object takes the attributes of an ontology phrase (the rest
    #                             drawn at random) rather than all at random, so the ontology's phrases appear


def _background(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    base = rng.uniform(80, 170)
    tint = rng.uniform(-12, 12, 3)
    if kind == "plain":
        return np.broadcast_to(base + tint, (h, w, 3)).astype(np.float32)
    if kind == "checker":
        cell = int(rng.integers(6, 17))
        other = base + rng.choice([-1, 1]) * rng.uniform(25, 45)
        yy, xx = np.mgrid[:h, :w]
        board = ((yy // cell + xx // cell) % 2).astype(np.float32)[..., None]
        return board * (base + tint) + (1 - board) * (other + tint)
    cells = (max(2, w // 8 + 1), max(2, h // 8 + 1))
    coarse = Image.fromarray(rng.normal(0, 22, cells[::-1]).astype(np.float32))
    smooth = np.asarray(coarse.resize((w, h), Image.BILINEAR), np.float32)[..., None]  # smooth brightness blobs
    fine = rng.normal(0, 5, (h, w, 1)).astype(np.float32)
    return (base + tint + smooth + fine).astype(np.float32)


def _shape_mask(shape: str, side: float, angle: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Mask of a shape of size `side` centred at 0 on the local pixel-centre grid (yy, xx), rotated by `angle`."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy  # rotated frame
    r = side / 2
    if shape == "circle":
        return xx * xx + yy * yy <= r * r
    if shape == "ring":
        d2 = xx * xx + yy * yy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        half = side / (2 * 1.1)  # a little smaller so its area is comparable to a circle's
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == "bar":
        return (np.abs(u) <= r) & (np.abs(v) <= max(1.5, 0.17 * side))
    if shape == "triangle":  # equilateral, apex up in its frame, circumradius r
        inside = v <= r / 2  # base edge
        for k in (1, 2):  # the two sloped edges
            a = math.pi / 2 + k * 2 * math.pi / 3
            nx, ny = math.cos(a), math.sin(a)
            inside &= u * nx + v * ny <= r / 2
        return inside
    raise ValueError(f"unknown shape {shape!r}")


def _paint(canvas: np.ndarray, region: tuple[slice, slice], mask: np.ndarray, colour: str, pattern: str,
           side: float, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> None:
    pixels = np.empty(mask.shape + (3,), np.float32)
    pixels[:] = COLOURS[colour]
    if pattern != "plain":
        period = max(4.0, side / 4.0)
        if pattern == "striped":
            a = rng.choice([0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4]) + rng.uniform(-0.2, 0.2)
            t = (math.cos(a) * xx + math.sin(a) * yy) / period + rng.uniform(0, 1)
            marks = (t - np.floor(t)) < 0.5
        else:
            period = max(5.0, side / 3.5)
            oy, ox = rng.uniform(0, period, 2)
            dy = (yy + oy) % period - period / 2
            dx = (xx + ox) % period - period / 2
            marks = dy * dy + dx * dx <= (0.3 * period) ** 2
        pixels[marks] = pattern_colour(colour)
    target = canvas[region]
    target[mask] = pixels[mask]


def _draw_attributes(rng: np.random.Generator, concept_attrs: Sequence[Mapping[str, str | None]],
                     concept_focus: float) -> tuple[str, str, str]:
    shape = str(rng.choice(SHAPES))
    colour = str(rng.choice(list(COLOURS)))
    pattern = str(rng.choice(PATTERNS))
    if concept_attrs and rng.random() < concept_focus:
        chosen = concept_attrs[int(rng.integers(len(concept_attrs)))]
        shape = chosen.get("shape") or shape
        colour = chosen.get("colour") or colour
        pattern = chosen.get("pattern") or pattern
    return shape, colour, pattern


def render_toy_image(rng: np.random.Generator, height: int = 112, width: int = 112, objects: tuple[int, int] = (1, 4),
                     background: str = "noise", min_object: float = 0.12, max_object: float = 0.3,
                     concept_attrs: Sequence[Mapping[str, str | None]] = (),
                     concept_focus: float = 0.5) -> tuple[np.ndarray, list[ToyObject]]:  # fmt: skip
    """Draw one toy image: (H, W, 3) uint8 pixels and its objects with their visible masks (in drawing order).

    `concept_attrs`: attribute dicts ({"shape", "colour", "pattern"}, None for any) an object copies with
    probability `concept_focus`; its other attributes are drawn at random.
    """
    canvas = _background(rng, height, width, background)
    owner = np.full((height, width), -1, np.int16)  # which object each pixel shows (-1: background)
    full_area: list[int] = []
    attrs: list[tuple[str, str, str]] = []
    lo, hi = objects
    short = min(height, width)
    for _ in range(int(rng.integers(lo, hi + 1))):
        shape, colour, pattern = _draw_attributes(rng, concept_attrs, concept_focus)
        side = float(rng.uniform(min_object, max_object)) * short
        side = max(side, 6.0)
        angle = float(rng.uniform(-math.pi, math.pi)) if shape == "bar" else float(rng.uniform(-0.35, 0.35))
        half = int(math.ceil(side * 0.5 * 1.02)) + 1
        n = 2 * half
        if n > height or n > width:
            continue
        local = np.arange(n, dtype=np.float32) - half + 0.5  # pixel centres relative to the object centre
        yy, xx = local[:, None], local[None, :]
        mask = _shape_mask(shape, side, angle, yy, xx)
        if not mask.any():
            continue
        new_id = len(attrs)
        visible = np.bincount(owner[owner >= 0], minlength=new_id)
        for _try in range(PLACEMENT_TRIES):
            y0 = int(rng.integers(0, height - n + 1))
            x0 = int(rng.integers(0, width - n + 1))
            region = (slice(y0, y0 + n), slice(x0, x0 + n))
            covered = owner[region][mask]
            hidden = np.bincount(covered[covered >= 0], minlength=new_id)
            if all(visible[j] - hidden[j] >= (1 - MAX_HIDDEN) * full_area[j] for j in np.flatnonzero(hidden)):
                break
        else:
            continue
        _paint(canvas, region, mask, colour, pattern, side, rng, yy, xx)
        owner[region][mask] = new_id
        full_area.append(int(mask.sum()))
        attrs.append((shape, colour, pattern))
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    placed = [ToyObject(s, c, p, owner == i) for i, (s, c, p) in enumerate(attrs)]
    return pixels, placed


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ConfigError(f"toy: {name} must be in (0, 1], got {value}")


class ToySource:
    """Procedural toy images with exact, exhaustive labels for every ontology phrase."""

    name = "toy"

    def __init__(self, config: ToyConfig, ontology: Any) -> None:
        self.config = config
        self.ontology = ontology
        self.phrases: list[str] = list(ontology.phrases())
        self.queries: dict[str, ToyQuery] = {}
        bad = []
        for phrase in self.phrases:
            try:
                self.queries[phrase] = parse_toy_phrase(phrase)
            except ValueError as err:
                bad.append(f"{phrase!r} ({err})")
        if bad:
            raise ConfigError(f"toy: ontology phrase(s) the toy domain cannot draw: {'; '.join(bad)}. "
                              f"A toy phrase is '[pattern] [colour] noun' with {known_words()}")
        size = config.size
        self.height, self.width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.height, self.width) < 16:
            raise ConfigError(f"toy: size must be at least 16 pixels, got {size}")
        lo, hi = config.objects
        if not 0 <= lo <= hi:
            raise ConfigError(f"toy: objects must be [min, max] with 0 <= min <= max, got {list(config.objects)}")
        _check_fraction("min_object", config.min_object)
        _check_fraction("max_object", config.max_object)
        if config.min_object > config.max_object:
            raise ConfigError(f"toy: min_object ({config.min_object}) exceeds max_object ({config.max_object})")
        if not 0 <= config.concept_focus <= 1:
            raise ConfigError(f"toy: concept_focus must be in [0, 1], got {config.concept_focus}")
        if config.num_images < 0:
            raise ConfigError(f"toy: num_images must be >= 0, got {config.num_images}")
        self.concept_attrs = [{"shape": q.shape, "colour": q.colour, "pattern": q.pattern}
                              for q in self.queries.values()]

    def plan(self) -> list[Task]:
        """num_images tasks {"key": "toy-000012", "seed", "index"}."""
        return [{"key": f"toy-{i:06d}", "seed": self.config.seed, "index": i} for i in range(self.config.num_images)]

    def setup(self, device: str) -> None:
        """Nothing to load."""

    def produce(self, tasks: Sequence[Task]) -> list[ProducedImage | SourceSkip]:
        """Render each task's image from np.random.default_rng([seed, index])."""
        return [self._produce_one(task) for task in tasks]

    def _produce_one(self, task: Task) -> ProducedImage:
        cfg = self.config
        rng = np.random.default_rng([int(task["seed"]), int(task["index"])])
        pixels, objects = render_toy_image(rng, self.height, self.width, cfg.objects, cfg.background,
                                           cfg.min_object, cfg.max_object, self.concept_attrs, cfg.concept_focus)
        masks = [encode_mask(o.mask) for o in objects]
        exact = [ExactInstance(phrase, masks[i]) for phrase in self.phrases
                 for i, obj in enumerate(objects) if self.queries[phrase].matches(obj)]
        provenance = {"kind": "toy", "seed": int(task["seed"]), "index": int(task["index"]),
                      "objects": [o.attributes() for o in objects]}
        return ProducedImage(task["key"], Image.fromarray(pixels), provenance, exact=exact,
                             exact_phrases=list(self.phrases))
