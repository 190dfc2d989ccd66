"""Image sources: the pool (folder, glob, list file, tar shards) and the procedural toy domain."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_model.errors import ConfigError
from sam3_model.records import decode_mask
from synth.ontology import ontology_from_mapping
from synth.sources import (
    ImageSource,
    PoolConfig,
    PoolSource,
    ProducedImage,
    SourceSkip,
    ToyConfig,
    ToySource,
    parse_toy_phrase,
)
from synth.sources.toy import COLOURS, pattern_colour

KEY_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def _rgb(seed: int, h: int = 20, w: int = 30) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pool"
    (root / "sub").mkdir(parents=True)
    _rgb(0).save(root / "a.png")
    _rgb(1).save(root / "b.JPG", quality=95)
    _rgb(2).save(root / "sub" / "c.png")
    Image.fromarray(np.full((10, 12), 77, np.uint8)).save(root / "grey.png")  # mode L
    (root / "bad.jpg").write_bytes(b"this is not a jpeg")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root


def _check_keys(tasks: list[dict]) -> None:
    keys = [t["key"] for t in tasks]
    assert len(set(keys)) == len(keys)
    assert all(set(k) <= KEY_CHARS for k in keys)


# --- pool -------------------------------------------------------------------------------------------------------


def test_pool_folder_sorted_and_skips(folder: Path) -> None:
    source = PoolSource(PoolConfig(folder=str(folder)), None)
    assert isinstance(source, ImageSource)
    tasks = source.plan()
    names = [Path(t["path"]).name for t in tasks]
    assert names == ["a.png", "b.JPG", "bad.jpg", "empty.png", "grey.png", "c.png"]  # sorted by path
    assert tasks == source.plan() == PoolSource(PoolConfig(folder=str(folder)), None).plan()
    _check_keys(tasks)
    source.setup("cpu")
    results = source.produce(tasks)
    assert [type(r).__name__ for r in results] == ["ProducedImage", "ProducedImage", "SourceSkip", "SourceSkip",
                                                   "ProducedImage", "ProducedImage"]
    bad, empty = results[2], results[3]
    assert str(folder / "bad.jpg") in bad.reason and "cannot decode" in bad.reason
    assert str(folder / "empty.png") in empty.reason and "cannot decode" in empty.reason
    a = results[0]
    assert isinstance(a, ProducedImage) and a.image.mode == "RGB"
    assert np.array_equal(np.asarray(a.image), np.asarray(_rgb(0)))
    assert a.file == folder / "a.png" and a.provenance == {"kind": "pool", "path": str(folder / "a.png")}
    assert results[1].file == folder / "b.JPG"  # an RGB JPEG without rotation: the file is the image
    grey = results[4]
    assert grey.image.mode == "RGB" and grey.file is None  # converted from L: not the stored pixels
    assert (np.asarray(grey.image) == 77).all()
    assert all(r.exact == [] and r.exact_phrases == [] for r in results if isinstance(r, ProducedImage))
    # a task yields the same result alone
    alone = source.produce([tasks[5]])[0]
    assert np.array_equal(np.asarray(alone.image), np.asarray(results[5].image))


def test_pool_not_recursive_limit_and_glob(folder: Path) -> None:
    flat = PoolSource(PoolConfig(folder=str(folder), recursive=False), None).plan()
    assert "c.png" not in [Path(t["path"]).name for t in flat]
    limited = PoolSource(PoolConfig(folder=str(folder), limit=2), None).plan()
    assert [Path(t["path"]).name for t in limited] == ["a.png", "b.JPG"]
    globbed = PoolSource(PoolConfig(glob=str(folder / "**" / "*.png")), None).plan()
    assert sorted(Path(t["path"]).name for t in globbed) == ["a.png", "c.png", "empty.png", "grey.png"]
    only_png = PoolSource(PoolConfig(folder=str(folder), extensions=["png"]), None).plan()
    assert all(t["path"].endswith(".png") for t in only_png)


def test_pool_list_file_relative_and_missing(folder: Path, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    list_file = lists / "images.txt"
    list_file.write_text(f"# pool\n../pool/a.png\n\n{folder / 'sub' / 'c.png'}\n../pool/missing.png\n")
    source = PoolSource(PoolConfig(list_file=str(list_file)), None)
    tasks = source.plan()
    assert [Path(t["path"]).name for t in tasks] == ["a.png", "missing.png", "c.png"]
    results = source.produce(tasks)
    assert isinstance(results[0], ProducedImage) and isinstance(results[2], ProducedImage)
    assert isinstance(results[1], SourceSkip) and "missing.png" in results[1].reason


def test_pool_tar_shards(tmp_path: Path) -> None:
    shards = []
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz")):
        path = tmp_path / f"shard{suffix}"
        with tarfile.open(path, mode) as archive:
            for name, seed in (("x/one.png", 3), ("two.jpg", 4), ("readme.txt", None), ("broken.png", None)):
                if seed is None:
                    data = b"not an image"
                else:
                    buffer = io.BytesIO()
                    _rgb(seed).save(buffer, format="PNG" if name.endswith("png") else "JPEG")
                    data = buffer.getvalue()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        shards.append(str(path))
    source = PoolSource(PoolConfig(tars=shards), None)
    tasks = source.plan()
    _check_keys(tasks)
    assert len(tasks) == 6 and [t["member"] for t in tasks[:3]] == ["broken.png", "two.jpg", "x/one.png"]
    results = source.produce(tasks)
    skips = [r for r in results if isinstance(r, SourceSkip)]
    assert len(skips) == 2 and all("broken.png" in s.reason and "cannot decode" in s.reason for s in skips)
    one = results[2]
    assert isinstance(one, ProducedImage) and one.file is None
    assert np.array_equal(np.asarray(one.image), np.asarray(_rgb(3)))
    assert one.provenance["kind"] == "pool" and one.provenance["member"] == "x/one.png"
    assert one.provenance["tar"] == str(Path(shards[0]).resolve())
    gz = source.produce([tasks[5]])[0]  # the .tar.gz copy, alone
    assert np.array_equal(np.asarray(gz.image), np.asarray(_rgb(3)))


def test_pool_exif_rotation_is_applied(tmp_path: Path) -> None:
    image = _rgb(5, 20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    result = PoolSource(PoolConfig(folder=str(tmp_path)), None).produce(
        PoolSource(PoolConfig(folder=str(tmp_path)), None).plan())[0]
    assert isinstance(result, ProducedImage)
    assert result.image.size == (20, 30) and result.file is None


def test_pool_empty_or_unset_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(ConfigError, match=str(tmp_path)):
        PoolSource(PoolConfig(folder=str(tmp_path)), None).plan()
    with pytest.raises(ConfigError, match="nothing-here"):
        PoolSource(PoolConfig(glob=str(tmp_path / "nothing-here" / "*.jpg")), None).plan()
    with pytest.raises(ConfigError, match="at least one"):
        PoolSource(PoolConfig(), None).plan()
    with pytest.raises(ConfigError, match="does not exist"):
        PoolSource(PoolConfig(folder=str(tmp_path / "nope")), None).plan()


# --- toy --------------------------------------------------------------------------------------------------------

TOY_ONTOLOGY = {"concepts": [
    {"name": "striped red square", "parent": "square", "hard_negatives": ["dotted red square"]},
    {"name": "blue circle", "parent": "circle"},
    {"name": "yellow triangle"},
    {"name": "ring"},
    {"name": "shape"},
]}


def _toy(**kw) -> ToySource:
    return ToySource(ToyConfig(**kw), ontology_from_mapping(TOY_ONTOLOGY))


def test_toy_plan_and_determinism_regardless_of_batch() -> None:
    source = _toy(num_images=12, seed=3)
    tasks = source.plan()
    assert len(tasks) == 12 and tasks == _toy(num_images=12, seed=3).plan()
    _check_keys(tasks)
    batch = source.produce(tasks[:8])
    alone = source.produce([tasks[5]])[0]
    other = _toy(num_images=12, seed=3).produce([tasks[7], tasks[5]])[1]
    for result in (alone, other):
        assert np.array_equal(np.asarray(result.image), np.asarray(batch[5].image))
        assert result.provenance == batch[5].provenance
        assert [(e.phrase, e.mask) for e in result.exact] == [(e.phrase, e.mask) for e in batch[5].exact]
    assert not np.array_equal(np.asarray(batch[0].image), np.asarray(batch[1].image))
    different_seed = _toy(num_images=12, seed=4).produce([tasks[5] | {"seed": 4}])[0]
    assert not np.array_equal(np.asarray(different_seed.image), np.asarray(batch[5].image))


def test_toy_masks_are_exact_and_phrases_match() -> None:
    source = _toy(num_images=40, size=[84, 112], background="checker")
    ontology_phrases = ontology_from_mapping(TOY_ONTOLOGY).phrases()
    seen_striped = 0
    for result in source.produce(source.plan()):
        assert result.image.size == (112, 84) and result.image.mode == "RGB"
        pixels = np.asarray(result.image)
        objects = result.provenance["objects"]
        assert result.exact_phrases == ontology_phrases
        everything = [e for e in result.exact if e.phrase == "shape"]  # "shape" matches every object, in order
        assert len(everything) == len(objects) >= 1
        union = np.zeros(pixels.shape[:2], bool)
        for obj, inst in zip(objects, everything):
            mask = decode_mask(inst.mask).astype(bool)
            assert mask.shape == pixels.shape[:2] and mask.any() and not (mask & union).any()
            union |= mask
            colours = {tuple(c) for c in pixels[mask].tolist()}
            base, shade = COLOURS[obj["colour"]], pattern_colour(obj["colour"])
            if obj["pattern"] == "plain":
                assert colours == {base}
            else:
                assert colours <= {base, shade}
                if obj["pattern"] == "striped" and mask.sum() >= 60:
                    assert colours == {base, shade}  # the stripes are visible
                    seen_striped += 1
        # every phrase's instances are exactly the objects that match it
        for phrase in ontology_phrases:
            query = parse_toy_phrase(phrase)
            got = [e.mask for e in result.exact if e.phrase == phrase]
            want = [everything[i].mask for i, obj in enumerate(objects) if query.matches(obj)]
            assert got == want, phrase
    assert seen_striped > 0


def test_toy_grammar_and_concept_focus() -> None:
    q = parse_toy_phrase("striped red square")
    assert (q.shape, q.colour, q.pattern) == ("square", "red", "striped")
    assert q.matches({"shape": "square", "colour": "red", "pattern": "striped"})
    assert not q.matches({"shape": "square", "colour": "red", "pattern": "plain"})
    assert parse_toy_phrase("Red Square").matches({"shape": "square", "colour": "red", "pattern": "dotted"})
    assert parse_toy_phrase("dotted shape").matches({"shape": "ring", "colour": "blue", "pattern": "dotted"})
    for bad in ("red", "square red", "big square", "red red square"):
        with pytest.raises(ValueError):
            parse_toy_phrase(bad)
    focused = ToySource(ToyConfig(num_images=10, concept_focus=1.0),
                        ontology_from_mapping({"concepts": ["dotted purple ring"]}))
    for result in focused.produce(focused.plan()):
        objects = result.provenance["objects"]
        assert objects and all(o == {"shape": "ring", "colour": "purple", "pattern": "dotted"} for o in objects)
        assert len(result.exact) == len(objects)


def test_toy_negative_phrase_is_exact_negative() -> None:
    source = ToySource(ToyConfig(num_images=5, concept_focus=0.0),
                       ontology_from_mapping({"concepts": ["circle", {"name": "square", "hard_negatives": ["bar"]}]}))
    for result in source.produce(source.plan()):
        assert result.exact_phrases == ["circle", "square", "bar"]
        shapes = [o["shape"] for o in result.provenance["objects"]]
        for phrase in result.exact_phrases:
            assert sum(e.phrase == phrase for e in result.exact) == shapes.count(phrase)


def test_toy_unparsable_phrase_is_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        ToySource(ToyConfig(), ontology_from_mapping({"concepts": [{"name": "red square",
                                                                    "hard_negatives": ["pink elephant"]}]}))
    assert "pink elephant" in str(err.value) and "circle" in str(err.value) and "striped" in str(err.value)


def test_toy_is_fast() -> None:
    source = _toy(num_images=100)
    start = time.perf_counter()
    source.produce(source.plan())
    assert (time.perf_counter() - start) / 100 < 0.02  # ~1 ms measured; the bound leaves room for slow CI
