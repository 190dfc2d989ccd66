"""The recipe's data on disk: labelled datasets (files or rendered toy), the data-engine runs, the trained verifier.

Everything goes under the recipe's output folder and is resumable: toy datasets and synth runs are `SynthRun`s
(finished shards are skipped), the verifier is trained once and saved.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.settings import DatasetSpec
from adapt.training.trainer import num_devices
from adapt.data.readers import read_dataset
from adapt.data.records import ImageSample
from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError
from sam3_model.formats import read_json, write_json_dataset
from sam3_model.images import load_image
from synth.config import SourceConfig, SynthConfig
from synth.engine import SynthRun
from verifiers.configs import CropClassifierVerifyConfig, VerifyConfig
from verifiers.crop_classifier import LabelledObject, train_crop_classifier
from verifiers.geometric import mask_iou

from .config import DataRef, GeneralData, ImagesRef, RecipeConfig

SAME_OBJECT_IOU = 0.8  # two phrases' instances with this mask IoU are one object


@dataclass(frozen=True)
class Dataset:
    """A labelled dataset ready for the DataModule."""

    path: str
    images: str | None
    format: str
    max_images: int | None = None

    def spec(self, **kwargs: Any) -> DatasetSpec:
        """A `DatasetSpec` of this dataset (`kwargs`: name, weight, max_images, max_negatives...)."""
        cap = kwargs.pop("max_images", None)
        caps = [c for c in (cap, self.max_images) if c is not None]
        return DatasetSpec(path=self.path, images=self.images, format=self.format,
                           max_images=min(caps) if caps else None, **kwargs)


def materialise(ref: DataRef, recipe: RecipeConfig, work: Path, progress: bool = True) -> Dataset:
    """The dataset of `ref`: its file, or toy images rendered (once) with exact labels under `work`."""
    if ref.path is not None:
        return Dataset(ref.path, ref.images, ref.format, ref.max_images)
    config = SynthConfig(ontology=ref.ontology if ref.ontology is not None else recipe.ontology, labels="exact",
                         source=SourceConfig(toy=ref.toy),
                         run=dataclasses.replace(recipe.synth, accelerator="cpu", devices=1, progress=progress))
    exact = SynthRun(config, work).run()["exact"]
    return Dataset(str(exact), None, "saco", ref.max_images)


def general_datasets(general: GeneralData | None, recipe: RecipeConfig, work: Path,
                     progress: bool = True) -> dict[str, Dataset]:
    """The general data on disk: {"general": the training mix, "general-test": the retention test} (either may be
    absent); with `held_out`, the test images are taken out of the training file."""
    if general is None:
        return {}
    found: dict[str, Dataset] = {}
    if general.train is not None:
        found["general"] = materialise(general.train, recipe, work / "general", progress)
    if general.test is not None:
        found["general-test"] = materialise(general.test, recipe, work / "general-test", progress)
    elif general.held_out:
        found["general"], found["general-test"] = hold_out(found["general"], general.held_out, work / "general-split")
    return found


def hold_out(data: Dataset, count: int, work: Path) -> tuple[Dataset, Dataset]:
    """Split a COCO or SA-Co file into (the rest, `count` held-out images), chosen by a hash of each file name so
    the choice does not depend on the file's order; both written under `work`, reading the original images."""
    content = read_json(data.path, "general data")
    names = sorted({entry["file_name"] for entry in content.get("images", [])},
                   key=lambda name: hashlib.sha1(name.encode("utf-8")).hexdigest())
    if count >= len(names):
        raise ConfigError(f"general.held_out: {count} images held out of {data.path}, which has only {len(names)}")
    test_names = set(names[:count])
    images = data.images or str(Path(data.path).parent)
    parts = []
    for name, keep in (("train", lambda n: n not in test_names), ("test", lambda n: n in test_names)):
        kept = [e for e in content["images"] if keep(e["file_name"])]
        ids = {e["id"] for e in kept}
        subset = {**content, "images": kept,
                  "annotations": [a for a in content.get("annotations", []) if a["image_id"] in ids]}
        path = write_json_dataset(work / f"{name}.json", subset)
        parts.append(Dataset(str(path), images, data.format, data.max_images if name == "train" else None))
    return parts[0], parts[1]


def verify_config(recipe: RecipeConfig, verifier_dir: Path | None) -> VerifyConfig:
    """The recipe's verifiers, plus the crop classifier trained on hq.train when there is one."""
    if verifier_dir is None:
        return recipe.verify
    threshold = recipe.verifier_training.threshold if recipe.verifier_training else 0.5
    return dataclasses.replace(recipe.verify,
                               crop_classifier=CropClassifierVerifyConfig(str(verifier_dir), threshold))


def synth_config(recipe: RecipeConfig, images: ImagesRef, verify: VerifyConfig, progress: bool,
                 teacher: str | None = None) -> SynthConfig:
    """The data-engine config of one image source: the recipe's teacher (or the model `teacher`) and `verify`."""
    teacher_config = recipe.teacher_config()
    if teacher is not None:
        teacher_config = dataclasses.replace(teacher_config, model=teacher)
    return SynthConfig(ontology=recipe.ontology, labels="teacher", source=images.source, teacher=teacher_config,
                       verify=verify, run=dataclasses.replace(recipe.synth, progress=progress))


def run_synth(recipe: RecipeConfig, images: ImagesRef, out: Path, verify: VerifyConfig, progress: bool = True,
              teacher: str | None = None, cluster: Any = None, detach: bool = False) -> dict[str, Path] | None:
    """Pseudo-label and verify `images` into `out` (resumable); returns {"pl": ..., "syn": ...} dataset files.

    With `cluster` (a `ClusterSweep`: train.launcher slurm) the sharded stages run as one job of synth.num_nodes x
    synth.devices ranks and merge runs here; None when `detach` left that job running.
    """
    if cluster is None:
        return SynthRun(synth_config(recipe, images, verify, progress, teacher), out).run()
    config = synth_config(recipe, images, verify, False, teacher)
    run = SynthRun(config, out)
    r = recipe.synth
    ranks = num_devices(r.devices, r.accelerator)
    finished = cluster.run_engine(f"synth:{out.name}", functools.partial(engine_stages, config, str(out)),
                                  run.stages_finished, nodes=r.num_nodes, tasks_per_node=ranks,
                                  gpus_per_node=0 if r.accelerator == "cpu" else ranks, detach=detach)
    return run.merge() if finished else None


def engine_stages(config: SynthConfig, out: str) -> None:
    """The data engine's sharded stages on this rank (a task of a distributed data-engine job)."""
    SynthRun(config, out).run_stages()


def labelled_objects(sample: ImageSample) -> list[LabelledObject]:
    """The objects of one exhaustively labelled image: instances of several phrases with one mask are one object.

    An object's negatives are the image's exhaustive phrases it is not an instance of.
    """
    masks: list[Any] = []
    positives: list[set[str]] = []
    for phrase in sample.phrases:
        for rle in phrase.masks or []:
            same = mask_iou([rle], masks)[0] if masks else []
            j = int(same.argmax()) if len(same) and same.max() >= SAME_OBJECT_IOU else None
            if j is None:
                masks.append(rle)
                positives.append({phrase.phrase})
            else:
                positives[j].add(phrase.phrase)
    exhaustive = {p.phrase for p in sample.phrases if p.exhaustive}
    return [LabelledObject(m, frozenset(pos), frozenset(exhaustive - pos)) for m, pos in zip(masks, positives)]


def train_verifier(recipe: RecipeConfig, hq_train: Dataset, out: Path, phrases: list[str], skip: int = 0) -> Path:
    """Train the crop-classifier verifier on the HQ training split (once; its first `skip` images left out, they
    calibrate it) and save it to `out`."""
    if (out / "report.json").is_file():
        return out
    result = read_dataset(hq_train.path, format=hq_train.format, image_root=hq_train.images)
    if result.problems:
        first = result.problems[0]
        raise ConfigError(f"{hq_train.path}: {len(result.problems)} bad entries in the HQ training data, first: "
                          f"{first}")
    samples = result.samples[: hq_train.max_images] if hq_train.max_images else result.samples
    if skip >= len(samples):
        raise ConfigError(f"calibration.hq_images: {skip} of the {len(samples)} hq.train images calibrate the "
                          "verifiers, which leaves none to train the crop classifier on; lower it")
    samples = samples[skip:]
    examples = [(load_image(s.image_path, str(s.image_path)), labelled_objects(s)) for s in samples]
    examples = [(image, objects) for image, objects in examples if objects]
    config = recipe.verifier_training or None
    verifier, report = train_crop_classifier(examples, phrases, config)
    verifier.save(out)
    atomic_write_text(out / "report.json", json.dumps({**report, "images": len(examples)}, indent=2) + "\n")
    return out


def verifier_report(out: Path) -> dict[str, Any]:
    """The saved training report of the trained verifier ({} when there is none)."""
    path = out / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}

