"""Copy-paste source: labels are exactly the pasted pixels, occlusion included; deterministic per task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_model.errors import ConfigError
from sam3_model.records import decode_mask, encode_mask
from synth.ontology import ontology_from_mapping
from synth.sources import CopyPasteConfig, CopyPasteSource, PoolConfig, ProducedImage, SourceSkip

COLOURS = {"red square": (230, 30, 30), "blue disc": (30, 30, 230), "green bar": (20, 200, 40)}
GREY = 128


def _instances(root: Path, num_images: int = 4) -> Path:
    """A COCO dataset: each image a red square (left half) and a blue disc (right half) on noise."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    h, w = 40, 80
    yy, xx = np.mgrid[:h, :w]
    for i in range(num_images):
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)  # noisy surroundings: must not leak
        side = int(rng.integers(10, 20))
        y0, x0 = int(rng.integers(0, h - side)), int(rng.integers(0, 40 - side))
        square = np.zeros((h, w), np.uint8)
        square[y0:y0 + side, x0:x0 + side] = 1
        r = float(rng.uniform(5, 10))
        cy, cx = float(rng.uniform(r, h - r)), float(rng.uniform(40 + r, w - r))
        disc = ((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r).astype(np.uint8)
        for cat, (mask, name) in enumerate(((square, "red square"), (disc, "blue disc")), start=1):
            pixels[mask.astype(bool)] = COLOURS[name]
            ys, xs = np.nonzero(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                                "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1),
                                         float(np.ptp(ys) + 1)],
                                "area": float(mask.sum()), "segmentation": encode_mask(mask)})
        Image.fromarray(pixels).save(root / "images" / f"src{i}.png")
        images.append({"id": i + 1, "file_name": f"images/src{i}.png", "height": h, "width": w})
    categories = [{"id": 1, "name": "red square"}, {"id": 2, "name": "blue disc"}, {"id": 3, "name": "green bar"}]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def data(tmp_path: Path) -> dict:
    instances = _instances(tmp_path / "inst")
    backgrounds = tmp_path / "bg"
    backgrounds.mkdir()
    for i, (h, w) in enumerate(((64, 96), (80, 80))):
        Image.fromarray(np.full((h, w, 3), GREY, np.uint8)).save(backgrounds / f"bg{i}.png")
    return {"instances": str(instances), "backgrounds": PoolConfig(folder=str(backgrounds)), "root": tmp_path}


ONTOLOGY = ontology_from_mapping({"concepts": ["red square", "blue disc"]})


def _source(data: dict, **kw) -> CopyPasteSource:
    config = CopyPasteConfig(instances=data["instances"], backgrounds=data["backgrounds"], **kw)
    return CopyPasteSource(config, ONTOLOGY)


def test_labels_are_exactly_the_pasted_pixels(data: dict) -> None:
    source = _source(data, num_images=12, per_image=(2, 4), scale=(1.0, 2.5), blend="none", min_visible=0.3)
    tasks = source.plan()
    assert len(tasks) == 12 and len({t["key"] for t in tasks}) == 12
    assert source._cutouts is None  # plan() does not read the instance dataset
    occluded = 0
    for result in source.produce(tasks):
        assert isinstance(result, ProducedImage)
        pixels = np.asarray(result.image).astype(int)
        changed = (pixels != GREY).any(-1)
        pasted = result.provenance["pasted"]
        assert len(result.exact) == len(pasted) >= 1
        union = np.zeros(changed.shape, bool)
        for inst, entry in zip(result.exact, pasted):
            assert inst.phrase == entry["phrase"]
            mask = decode_mask(inst.mask).astype(bool)
            assert mask.any() and not (mask & union).any()  # disjoint: each pixel belongs to the top paste
            union |= mask
            assert (pixels[mask] == COLOURS[inst.phrase]).all()  # the label is exactly its colour
            assert mask.sum() == entry["visible_px"] >= 0.3 * entry["pasted_px"]
            occluded += entry["visible_px"] < entry["pasted_px"]
        assert np.array_equal(union, changed)  # every changed pixel is labelled, and only those
        assert result.exact_phrases == list(dict.fromkeys(p["phrase"] for p in pasted))
        assert result.provenance["background"].endswith((".png"))
    assert occluded > 0  # the scales make overlaps happen: occlusion was exercised


def test_gaussian_blend_labels_follow_alpha(data: dict) -> None:
    source = _source(data, num_images=6, per_image=(1, 1), blend="gaussian", blend_sigma=1.0)
    for result in source.produce(source.plan()):
        pixels = np.asarray(result.image).astype(float)
        (inst,) = result.exact
        mask = decode_mask(inst.mask).astype(bool)
        colour = np.array(COLOURS[inst.phrase], float)
        # label = alpha >= 0.5, and the feathered rim has the cut-out's colour: each pixel is the colour and grey
        # mixed, at least half colour inside the label and less than half outside
        share = ((pixels - GREY) @ (colour - GREY)) / ((colour - GREY) @ (colour - GREY))
        assert np.allclose(pixels, GREY + share[..., None] * (colour - GREY), atol=1.0)
        assert (share[mask] >= 0.5 - 0.01).all() and (share[~mask] <= 0.5 + 0.01).all()
        assert ((share > 0.02) & ~mask).any()  # the feathered rim falls outside the label
    crowded = _source(data, num_images=6, per_image=(3, 3), scale=(1.5, 2.5), blend="gaussian")
    for result in crowded.produce(crowded.plan()):
        masks = [decode_mask(e.mask).astype(bool) for e in result.exact]
        assert all(m.any() for m in masks) and (np.sum(masks, axis=0) <= 1).all()
        assert [m.sum() for m in masks] == [p["visible_px"] for p in result.provenance["pasted"]]


def test_deterministic_per_task_and_phrase_restriction(data: dict) -> None:
    source = _source(data, num_images=6)
    tasks = source.plan()
    batch = source.produce(tasks)
    alone = _source(data, num_images=6).produce([tasks[4]])[0]
    assert np.array_equal(np.asarray(alone.image), np.asarray(batch[4].image))
    assert alone.provenance == batch[4].provenance
    assert [e.mask for e in alone.exact] == [e.mask for e in batch[4].exact]
    only_discs = _source(data, num_images=6, phrases=["blue disc"], exhaustive=False)
    for result in only_discs.produce(only_discs.plan()):
        assert {e.phrase for e in result.exact} == {"blue disc"} and result.exact_phrases == []


def test_unknown_phrases_and_bad_background(data: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no instance with a mask"):
        CopyPasteSource(CopyPasteConfig(instances=data["instances"], backgrounds=data["backgrounds"]),
                        ontology_from_mapping({"concepts": ["green bar"]})).setup("cpu")  # no green bar instance
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.jpg").write_bytes(b"junk")
    source = _source(data | {"backgrounds": PoolConfig(folder=str(broken))}, num_images=1)
    result = source.produce(source.plan())[0]
    assert isinstance(result, SourceSkip) and str(broken / "x.jpg") in result.reason
