"""Cloud data: image pools and dataset image roots given as fsspec URLs, on fsspec's memory and local file systems.

`memory://` stands in for s3:// or gs:// (same code path: `fsspec.core.url_to_fs`, then `find`/`glob`/`open`);
`file://` is the local disk read through fsspec.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from adapt.data.datamodule import Sam3DataModule
from adapt.data.readers import read_dataset
from adapt.settings import DatasetSpec
from fabricate import make_coco_dataset
from sam3_model import storage
from sam3_model.configs import resolve_paths
from sam3_model.errors import ConfigError, ImageError
from sam3_model.images import load_image, read_image_size
from synth.config import synth_config_from_mapping
from synth.engine import SynthRun
from synth.sources import PoolConfig, PoolSource, ProducedImage, SourceSkip
from synth_helpers import ONTOLOGY

POOL_FILES = ("a.png", "b.jpg", "sub/c.png")


@pytest.fixture
def memory():
    """fsspec's in-memory file system, emptied after the test (it is one store per process)."""
    fs = fsspec.filesystem("memory")
    yield fs
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    """A local pool: two PNGs (one in a subfolder), an RGB JPEG, and a file that is no image."""
    root = tmp_path / "pool"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in POOL_FILES:
        Image.fromarray((rng.random((64, 80, 3)) * 255).astype(np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def _upload(fs, local: Path, remote: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.pipe(f"{remote}/{path.relative_to(local).as_posix()}", path.read_bytes())


def _synth(folder: str, base: Path, out: Path) -> Path:
    data = {"ontology": ONTOLOGY, "source": {"pool": {"folder": folder}},
            "teacher": {"model": "tiny", "threshold": 0.2, "candidate_threshold": 0.05},
            "verify": {"geometric": {}}, "run": {"shard_size": 2, "progress": False, "accelerator": "cpu"}}
    SynthRun(synth_config_from_mapping(data, "test config:", base), out).run()
    return out


def _without_keys(dataset: dict) -> dict:
    """A dataset with its run-specific names taken out: image keys (the hash of where the image was) and paths."""
    text = json.dumps({k: dataset[k] for k in ("images", "annotations", "categories")})
    text = re.sub(r"-[0-9a-f]{10}\b", "-KEY", text)
    return json.loads(re.sub(r'"path": "[^"]*/([^"/]+)"', r'"path": "\1"', text))


# --- pools ----------------------------------------------------------------------------------------------------


def test_a_synth_run_over_a_memory_pool_equals_the_run_over_the_local_copy(memory, pool: Path, tmp_path: Path) -> None:
    _upload(memory, pool, "memory://pool")
    local = _synth("pool", tmp_path, tmp_path / "local")  # relative: resolved against the config's folder
    remote = _synth("memory://pool", tmp_path, tmp_path / "remote")
    for name in ("pl", "syn"):
        ours, theirs = (json.loads((run / f"{name}.json").read_text()) for run in (remote, local))
        assert len(ours["images"]) == len(theirs["images"]) == 3 * 3  # three images, three phrases each
        assert _without_keys(ours) == _without_keys(theirs)
    pl = json.loads((remote / "pl.json").read_text())
    assert len(pl["annotations"]) > 0
    assert {a["provenance"]["source"]["path"] for a in pl["annotations"]} <= {f"memory://pool/{n}" for n in POOL_FILES}
    # the pool's files are copied into the run folder as they are (the JPEG too: same bytes, same suffix)
    copied = sorted((remote / "images").iterdir())
    assert [p.suffix for p in copied] == [".png", ".jpg", ".png"]
    assert [p.read_bytes() for p in copied] == [(pool / n).read_bytes() for n in POOL_FILES]
    assert not read_dataset(remote / "pl.json").problems


def test_pool_urls_are_listed_and_read_through_fsspec(memory, pool: Path, tmp_path: Path) -> None:
    _upload(memory, pool, "memory://pool")
    tasks = PoolSource(PoolConfig(folder="memory://pool"), None).plan()
    assert [t["path"] for t in tasks] == [f"memory://pool/{n}" for n in POOL_FILES]  # sorted, spelt as configured
    assert tasks == PoolSource(PoolConfig(folder="memory://pool/"), None).plan()  # deterministic keys
    flat = PoolSource(PoolConfig(folder="memory://pool", recursive=False), None).plan()
    assert [t["path"] for t in flat] == ["memory://pool/a.png", "memory://pool/b.jpg"]
    globbed = PoolSource(PoolConfig(glob="memory://pool/**/*.png"), None).plan()
    assert [t["path"] for t in globbed] == ["memory://pool/a.png", "memory://pool/sub/c.png"]
    memory.pipe("memory://lists/images.txt", b"# a remote list\n../pool/a.png\nmemory://pool/sub/c.png\n../pool/gone.png\n")
    listed = PoolSource(PoolConfig(list_file="memory://lists/images.txt"), None)
    tasks = listed.plan()
    assert [t["path"] for t in tasks] == ["memory://pool/a.png", "memory://pool/gone.png", "memory://pool/sub/c.png"]
    a, gone, c = listed.produce(tasks)
    assert isinstance(a, ProducedImage) and a.file == "memory://pool/a.png" and a.data == (pool / "a.png").read_bytes()
    assert np.array_equal(np.asarray(a.image), np.asarray(Image.open(pool / "a.png")))
    assert a.provenance == {"kind": "pool", "path": "memory://pool/a.png"}
    assert isinstance(gone, SourceSkip) and "memory://pool/gone.png" in gone.reason and "not found" in gone.reason
    # a tar shard given as a URL
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in POOL_FILES:
            archive.add(pool / name, arcname=name)
    memory.pipe("memory://shards/part-0.tar.gz", buffer.getvalue())
    shard = PoolSource(PoolConfig(tars=["memory://shards/part-0.tar.gz"]), None)
    members = shard.plan()
    assert [t["member"] for t in members] == sorted(POOL_FILES) and members[0]["key"].startswith("part-0.a-")
    produced = shard.produce(members)
    assert all(isinstance(r, ProducedImage) for r in produced)
    assert produced[0].provenance["path"] == "memory://shards/part-0.tar.gz::a.png"


def test_a_file_url_pool_works_too(pool: Path) -> None:
    url = pool.as_uri()  # file:///.../pool
    source = PoolSource(PoolConfig(folder=url), None)
    tasks = source.plan()
    assert [t["path"] for t in tasks] == [f"{url}/{n}" for n in POOL_FILES]
    local = PoolSource(PoolConfig(folder=str(pool)), None)
    for ours, theirs in zip(source.produce(tasks), local.produce(local.plan())):
        assert np.array_equal(np.asarray(ours.image), np.asarray(theirs.image))
        assert ours.file == f"{url}/{Path(theirs.file).relative_to(pool).as_posix()}"
        assert ours.data == theirs.file.read_bytes()


def test_missing_remote_folders_and_drivers_are_one_line_config_errors(memory) -> None:
    with pytest.raises(ConfigError, match="memory://nowhere") as missing:
        PoolSource(PoolConfig(folder="memory://nowhere"), None).plan()
    assert "\n" not in str(missing.value) and "does not exist" in str(missing.value)
    with pytest.raises(ConfigError, match=r"no image .* glob 'memory://nowhere/\*\*"):
        PoolSource(PoolConfig(glob="memory://nowhere/**/*.jpg"), None).plan()
    with pytest.raises(ConfigError, match="memory://nowhere/list.txt"):
        PoolSource(PoolConfig(list_file="memory://nowhere/list.txt"), None).plan()
    with pytest.raises(ConfigError, match="tar shard memory://nowhere/x.tar does not exist"):
        PoolSource(PoolConfig(tars=["memory://nowhere/x.tar"]), None).plan()
    with pytest.raises(ConfigError, match="not a URL fsspec can open"):
        storage.read_bytes("nosuchprotocol://bucket/a.jpg")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"s3://bucket/photos: .*pip install s3fs") as driver:
            PoolSource(PoolConfig(folder="s3://bucket/photos"), None).plan()
        assert "\n" not in str(driver.value)
    with pytest.raises(ImageError, match="memory://nowhere/a.png: no such image file"):
        load_image("memory://nowhere/a.png", "test")


def test_relative_paths_resolve_against_the_config_folder_and_urls_stay_as_written(tmp_path: Path) -> None:
    cfg = synth_config_from_mapping({"ontology": ONTOLOGY, "source": {"pool": {
        "folder": "photos", "glob": "s3://bucket/photos/**/*.jpg", "list_file": "memory://lists/a.txt",
        "tars": ["shards/0.tar", "gs://bucket/shards/1.tar", "file:///data/2.tar"]}}}, "test:", tmp_path)
    pool = cfg.source.pool
    assert pool.folder == str(tmp_path.resolve() / "photos")
    assert (pool.glob, pool.list_file) == ("s3://bucket/photos/**/*.jpg", "memory://lists/a.txt")
    assert pool.tars == [str(tmp_path.resolve() / "shards/0.tar"), "gs://bucket/shards/1.tar", "file:///data/2.tar"]
    assert resolve_paths(PoolConfig(folder="s3://b/x"), tmp_path).folder == "s3://b/x"
    assert storage.is_url("simplecache::s3://b/x") and storage.is_url("file:///x")
    assert not storage.is_url("photos/a.jpg") and not storage.is_url("/data/s3://x") and not storage.is_url(Path("x"))
    assert storage.join("memory://data/images", "sub/../a.png") == "memory://data/images/a.png"
    assert storage.parent("s3://bucket/train.json") == "s3://bucket"


# --- dataset image roots ----------------------------------------------------------------------------------------


def _same(a: object, b: object) -> bool:
    """Equal batches: tensors element for element, dataclasses field by field, lists item by item."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _batches(spec: DatasetSpec) -> list:
    module = Sam3DataModule(val=[spec], image_size=56, num_workers=0, batch_size=2)
    module.setup("validate")
    return list(module.val_dataloader()[0])


def test_a_coco_dataset_with_a_memory_image_root_gives_the_same_tensors(memory, tmp_path: Path) -> None:
    path = make_coco_dataset(tmp_path / "coco", 3, size=(48, 64))
    _upload(memory, tmp_path / "coco", "memory://coco")
    local = _batches(DatasetSpec(path=str(path)))
    remote = _batches(DatasetSpec(path=str(path), images="memory://coco"))
    remote_json = _batches(DatasetSpec(path="memory://coco/annotations.json"))  # the annotation file too (default root)
    samples = read_dataset(path, image_root="memory://coco").samples
    assert [s.image_path for s in samples] == [f"memory://coco/images/img{i:03d}.png" for i in range(3)]
    assert read_image_size(samples[0].image_path) == (64, 48)
    for other in (remote, remote_json):
        assert len(other) == len(local) == 2
        assert all(_same(ours, theirs) for ours, theirs in zip(other, local))


def test_a_missing_remote_image_is_a_dataset_problem_naming_its_url(memory, tmp_path: Path) -> None:
    path = make_coco_dataset(tmp_path / "coco", 2, size=(48, 64))
    _upload(memory, tmp_path / "coco", "memory://coco")
    memory.rm("memory://coco/images/img001.png")
    result = read_dataset(path, image_root="memory://coco")
    assert len(result.samples) == 1 and len(result.problems) == 1
    assert "memory://coco/images/img001.png" in str(result.problems[0])
    assert "image file not found" in str(result.problems[0])


def test_recipe_check_accepts_url_pools_and_image_roots_and_names_missing_ones(memory, pool: Path) -> None:
    """`recipe run` checks its inputs first: URLs are looked up through fsspec, not as local paths."""
    from recipes.check import check_recipe
    from recipes.config import load_recipe

    _upload(memory, pool, "/bucket/pool")
    memory.pipe("/bucket/coco/train.json", b"{}")
    there = {"pool": {"source": {"pool": {"folder": "memory://bucket/pool"}}},
             "hq": {"train": {"path": "memory://bucket/coco/train.json", "images": "memory://bucket/pool"}}}
    keys = {f.key for f in check_recipe(load_recipe("food", there))}
    assert not keys & {"pool.source.pool.folder", "hq.train", "hq.train.images"}
    gone = {"pool": {"source": {"pool": {"glob": "memory://bucket/none/*.jpg"}}},
            "hq": {"train": {"path": "memory://bucket/coco/missing.json", "images": "s3://bucket/images"}}}
    lines = {f.key: f.line() for f in check_recipe(load_recipe("food", gone))}
    assert "no image matches memory://bucket/none/*.jpg" in lines["pool.source.pool.glob"]
    assert "annotation file memory://bucket/coco/missing.json not found" in lines["hq.train"]
    assert "pip install s3fs" in lines["hq.train.images"]  # no driver here: said, not a traceback


def test_review_shows_and_records_images_of_a_url_root(memory, tmp_path: Path) -> None:
    """`sam3-adapt review FILE --images memory://...`: the page gets the image through fsspec, human_sample.json
    names it by URL, and calibration reads that sample."""
    from synth.review.items import read_items, sample_items
    from synth.review.server import BoxSegmenter, create_app, image_root_of
    from synth.review.store import ReviewStore
    from verifiers.calibration import read_human_sample

    local = make_coco_dataset(tmp_path / "coco", 2, seed=3)
    _upload(memory, local.parent / "images", "/bucket/coco/images")
    root = "memory://bucket/coco"
    items = sample_items(read_items(local, root), "all")
    assert {str(i.image_path) for i in items} == {f"{root}/images/img000.png", f"{root}/images/img001.png"}
    assert {i.file_name for i in items} == {"images/img000.png", "images/img001.png"}  # as the file names them
    store = ReviewStore(tmp_path / "review", items, image_root_of(local, root))
    client = create_app(store, BoxSegmenter(None)).test_client()
    item = client.get("/api/next").get_json()["item"]
    shown = client.get("/image/0")
    assert shown.status_code == 200 and shown.data == memory.cat_file(f"/bucket/coco/{store.items[store.order[0]].file_name}")
    answer = {"answer_id": "a1", "item": item["key"], "reviewer": "r", "mv": ["accept"] * len(item["instances"]),
              "ev": True, "added": []}
    assert client.post("/api/answer", json=answer).status_code == 200
    sample = json.loads((tmp_path / "review" / "human_sample.json").read_text())
    assert sample["exhaustivity"][0]["file_name"].startswith(f"{root}/images/")
    assert json.loads((tmp_path / "review" / "hq.json").read_text())["info"]["images"] == root
    assert len(read_human_sample(tmp_path / "review" / "human_sample.json").exhaustivity) == 1
