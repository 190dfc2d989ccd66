"""Per-pair tables and image-level bootstrap intervals: exact point estimates, files, intervals, paired differences,
subsets, and the tables `Sam3FineTuner` keeps after validation."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from fabricate import make_coco_dataset

from adapt.evaluation.bootstrap import (
    METRICS,
    PairTable,
    bootstrap_metrics,
    hard_negative_mask,
    intervals,
    paired_difference,
    point_estimate,
)
from adapt.evaluation.cgf1 import evaluate_pairs
from adapt.evaluation.pairs import PairPrediction, PairTruth

VOCAB = ["cat", "dog", "car", "tree", "bus", "cup", "kitten", "puppy"]
SIBLINGS = {"cat": ["kitten"], "kitten": ["cat"], "dog": ["puppy"], "puppy": ["dog"]}


def _gt_boxes(rng: np.random.Generator, g: int) -> np.ndarray:
    """(g, 4) xywh boxes in a 200 x 200 image."""
    xy, wh = rng.uniform(0, 150, (g, 2)), rng.uniform(10, 50, (g, 2))
    return np.concatenate([xy, wh], 1)


def _predict(rng: np.random.Generator, gt: np.ndarray, skill: float) -> tuple[np.ndarray, np.ndarray]:
    """(D,) scores and (D, 4) boxes: jittered GTs (found with probability `skill`) plus spurious boxes."""
    found = gt[rng.random(len(gt)) < skill]
    jitter = rng.normal(0, 6 * (1 - skill) + 0.5, found.shape)
    spurious = _gt_boxes(rng, int(rng.poisson(1.5 * (1 - skill))))
    boxes = np.concatenate([found + jitter, spurious]).reshape(-1, 4)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 1)
    scores = np.concatenate([rng.uniform(0.5 - 0.4 * (1 - skill), 1, len(found)), rng.uniform(0, 0.8, len(spurious))])
    return scores, boxes


def _truths(seed: int, num_images: int) -> tuple[dict[int, PairTruth], dict[int, str]]:
    """Random SA-Co-like pairs: non-consecutive image and pair ids, 2-5 phrases per image, 0-4 instances each."""
    rng = np.random.default_rng(seed)
    truths, image_of = {}, {}
    image_ids = rng.choice(100_000, num_images, replace=False) * 3 + 7
    for image_id in image_ids.tolist():
        for phrase in rng.choice(VOCAB, int(rng.integers(2, 6)), replace=False).tolist():
            pid = 11 * len(truths) + 5
            g = int(rng.choice([0, 0, 0, 1, 2, 4]))
            truths[pid] = PairTruth(pid, phrase, 200, 200, True, _gt_boxes(rng, g), [], np.zeros(g, bool))
            image_of[pid] = f"img{image_id}"
    return truths, image_of


def _predictions(truths: dict[int, PairTruth], seed: int, skill: float) -> dict[int, PairPrediction]:
    """Predictions of a model of the given skill (1: near perfect) for every pair."""
    rng = np.random.default_rng(seed)
    out = {}
    for pid, t in truths.items():
        scores, boxes = _predict(rng, t.boxes_xywh, skill)
        out[pid] = PairPrediction(pid, scores, boxes, [])
    return out


def _table(truths, image_of, preds, truths_list=None) -> tuple[PairTable, dict[str, float]]:
    """Table and official-reproducing metrics of one box evaluation."""
    result = evaluate_pairs(truths_list or [truths], preds, "bbox")
    return PairTable.from_result(result, image_of, iou_type="bbox", score_threshold=0.5), result.metrics


@pytest.fixture(scope="module")
def realistic():
    truths, image_of = _truths(0, 60)
    return truths, image_of, _table(truths, image_of, _predictions(truths, 1, 0.6))


def _duplicate(table: PairTable, times: int) -> PairTable:
    """The same images `times` over, under new keys (a test set `times` as large with the same distribution)."""
    n = table.num_images
    keys = [f"{k}#{r}" for r in range(times) for k in table.image_keys.tolist()]

    def rep(column: np.ndarray) -> np.ndarray:
        return np.concatenate([column] * times)

    return PairTable(keys, rep(table.image_ids), rep(table.image_files),
                     np.concatenate([table.pair_image + r * n for r in range(times)]), rep(table.phrases),
                     rep(table.num_gt), rep(table.num_dt), rep(table.tps), table.iou_type, table.score_threshold)


# ------------------------------------------------------------------------------------------ point estimate


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_estimate_equals_evaluate_pairs(seed):
    truths, image_of = _truths(seed, 40)
    table, metrics = _table(truths, image_of, _predictions(truths, seed + 10, 0.6))
    assert all(metrics[f"IL_{k}"] > 0 for k in ("TP", "FP", "TN", "FN"))  # every image-level outcome occurs
    assert table.num_gt.max() >= 2 and table.num_images == 40 and table.num_pairs == len(truths)
    point = point_estimate(table)
    for k in METRICS:
        assert point[k] == pytest.approx(metrics[k], abs=1e-9), k
    assert metrics["IL_MCC"] != 0 and metrics["pmF1"] > 0


def test_result_arrays_match_the_per_pair_outcomes(realistic):
    truths, _, _ = realistic
    result = evaluate_pairs([truths], _predictions(truths, 1, 0.6), "bbox")
    assert result.num_gt.tolist() == [o.num_gt for o in result.per_pair]
    assert result.num_dt.tolist() == [o.num_pred for o in result.per_pair]
    assert result.tps.shape == (len(truths), 10) and (np.diff(result.tps, axis=1) <= 0).all()  # TP_t falls with t


def test_point_estimate_follows_the_oracle_selection():
    truths, image_of = _truths(5, 30)
    other = {pid: PairTruth(pid, t.phrase, 200, 200, True, t.boxes_xywh[:1], [], t.iscrowd[:1])
             for pid, t in truths.items()}  # a second GT file that keeps one instance of each pair
    table, metrics = _table(truths, image_of, _predictions(truths, 6, 0.5), [truths, other])
    for k in METRICS:
        assert point_estimate(table)[k] == pytest.approx(metrics[k], abs=1e-9), k


def test_subset_point_estimate_equals_evaluate_pairs_on_those_pairs(realistic):
    truths, _, (table, _) = realistic
    mask = hard_negative_mask(table, SIBLINGS)
    assert (table.num_gt > 0).sum() < mask.sum() < table.num_pairs  # some, not all, negatives are hard
    kept = [pid for pid, m in zip(truths, mask) if m]  # table rows follow the GT order
    sub_metrics = evaluate_pairs([{p: truths[p] for p in kept}], _predictions(truths, 1, 0.6), "bbox").metrics
    sub = table.subset(mask)
    assert sub.num_images == table.num_images  # images keep their place in the resampling
    for k in METRICS:
        assert point_estimate(sub)[k] == pytest.approx(sub_metrics[k], abs=1e-9), k
    low, high = intervals(sub, 300, seed=0)["IL_FPR"]
    assert low <= point_estimate(sub)["IL_FPR"] <= high


# ------------------------------------------------------------------------------------------ files


def test_table_round_trips_through_its_file(realistic, tmp_path):
    _, _, (plain, _) = realistic
    table = PairTable(**{**plain.__dict__, "image_ids": [f"id{i}" for i in range(plain.num_images)]})
    path = table.save(tmp_path / "run" / "pairs.npz")
    assert path.is_file() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    back = PairTable.load(path)
    for name in ("image_keys", "image_ids", "image_files", "pair_image", "phrases", "num_gt", "num_dt", "tps"):
        np.testing.assert_array_equal(getattr(back, name), getattr(table, name), err_msg=name)
    assert (back.iou_type, back.score_threshold) == ("bbox", 0.5)
    assert point_estimate(back) == point_estimate(table)
    (tmp_path / "other.npz").write_bytes(b"not a table")
    with pytest.raises(ValueError, match="not a pair table"):
        PairTable.load(tmp_path / "other.npz")


# ------------------------------------------------------------------------------------------ intervals


def test_intervals_are_deterministic_contain_the_estimate_and_narrow_with_more_images(realistic):
    _, _, (table, _) = realistic
    first, again = intervals(table, 1000, seed=3), intervals(table, 1000, seed=3)
    assert first == again and intervals(table, 1000, seed=4) != first
    point = point_estimate(table)
    big = _duplicate(table, 4)
    assert point_estimate(big) == pytest.approx(point, abs=1e-6)  # equal but for the epsilons
    wide = intervals(big, 1000, seed=3)
    for k in METRICS:
        low, high = first[k]
        assert low <= point[k] <= high and high > low, k
        assert wide[k][1] - wide[k][0] < 0.75 * (high - low), k  # ~1/2 expected: 1/sqrt(4)


def test_paired_difference_of_a_model_with_itself_is_zero(realistic):
    _, _, (table, _) = realistic
    for k, (estimate, low, high) in paired_difference(table, table, 500, seed=1).items():
        assert estimate == low == high == 0.0, k


def test_a_clearly_better_model_excludes_zero_and_the_order_of_images_does_not_matter(realistic):
    truths, image_of, (weak, _) = realistic
    strong, _ = _table(truths, image_of, _predictions(truths, 2, 0.95))
    diff = paired_difference(strong, weak, 1000, seed=0)
    for k in ("cgF1", "pmF1", "IL_MCC"):
        estimate, low, high = diff[k]
        assert 0 < low <= estimate <= high, (k, diff[k])
    order = np.random.default_rng(0).permutation(weak.num_images)  # the same images, listed in another order
    inverse = np.argsort(order)
    shuffled = PairTable(weak.image_keys[order], weak.image_ids[order], weak.image_files[order],
                         inverse[weak.pair_image], weak.phrases, weak.num_gt, weak.num_dt, weak.tps, "bbox", 0.5)
    assert paired_difference(strong, shuffled, 1000, seed=0) == diff
    assert paired_difference(weak, shuffled, 200)["cgF1"] == (0.0, 0.0, 0.0)


def test_mismatched_images_are_refused(realistic):
    _, _, (table, _) = realistic
    keys = table.image_keys.tolist()
    moved = PairTable(**{**table.__dict__, "image_keys": [*keys[:-1], "elsewhere"]})
    with pytest.raises(ValueError, match="same test images"):
        paired_difference(table, moved)
    ids = [f"id{i}" for i in range(table.num_images)]
    named = PairTable(**{**table.__dict__, "image_ids": ids})
    other = PairTable(**{**table.__dict__, "image_ids": [*ids[:3], "another", *ids[4:]]})
    with pytest.raises(ValueError, match="image_ids"):
        paired_difference(named, other)
    assert paired_difference(named, table)["cgF1"] == (0.0, 0.0, 0.0)  # an unknown id ("") is no clash


def test_bootstrap_is_fast_on_a_realistic_table():
    rng = np.random.default_rng(0)
    n_pairs, n_images = 2000, 300
    num_gt = rng.choice([0, 0, 0, 1, 2, 5], n_pairs)
    num_dt = np.maximum(num_gt + rng.integers(-1, 2, n_pairs), 0)
    tps = np.sort(rng.integers(0, np.minimum(num_gt, num_dt)[:, None] + 1, (n_pairs, 10)), axis=1)[:, ::-1]
    table = PairTable([f"i{k}" for k in range(n_images)], [""] * n_images, [""] * n_images,
                      np.sort(rng.integers(0, n_images, n_pairs)), ["p"] * n_pairs, num_gt, num_dt, tps)
    start = time.perf_counter()
    values = bootstrap_metrics(table, 1000, seed=0)
    intervals(table, 1000, seed=0)
    elapsed = time.perf_counter() - start
    assert values["cgF1"].shape == (1000,) and np.isfinite(values["cgF1"]).all()
    assert elapsed < 1.0, elapsed


# ------------------------------------------------------------------------------------------ fine-tuner


class _MidThreshold(L.Callback):
    """Sets the cgF1 threshold to the median best score of the epoch, so the untrained tiny model has pairs with
    and without detections (its scores sit around 0.28: at 0.5 every pair would have none)."""

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        best = [float(q.scores.max()) for q in module._val_predictions if len(q.scores)]
        module.validation_config.score_threshold = float(np.median(best))


def test_fine_tuner_keeps_the_tables_of_each_validation_set(tmp_path):
    from adapt.data.datamodule import Sam3DataModule
    from adapt.settings import DatasetSpec, ValidationConfig
    from adapt.training.module import Sam3FineTuner
    from adapt.training.trainer import build_trainer

    first, second = make_coco_dataset(tmp_path / "a", 4, seed=1), make_coco_dataset(tmp_path / "b", 5, seed=2)
    module = Sam3FineTuner("tiny", validation=ValidationConfig(min_score=0.0, max_detections=5, panel_images=1))
    datamodule = Sam3DataModule(val=[DatasetSpec(path=str(first)), DatasetSpec(path=str(second), name="general")],
                                batch_size=2, num_workers=0)
    trainer = build_trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_checkpointing=False, quiet=True, precision="32-true", callbacks=[_MidThreshold()],
                            default_root_dir=str(tmp_path))  # the panel PNGs go there
    trainer.validate(module, datamodule=datamodule, verbose=False)
    assert set(module.evaluation_tables) == set(module.evaluation_box_tables) == {"annotations", "general"}
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name, images in (("annotations", 4), ("general", 5)):
        table, box = module.evaluation_tables[name], module.evaluation_box_tables[name]
        assert table.iou_type == "segm" and box.iou_type == "bbox" and table.num_images == images
        assert (table.num_dt > 0).any() and (table.num_dt == 0).any()
        assert table.score_threshold == module.validation_config.score_threshold
        assert table.image_keys.tolist() == [f"{datamodule.eval_set_names().index(name)}:{i}" for i in range(images)]
        assert all(Path(f).name.startswith("img") for f in table.image_files) and all(table.image_ids != "")
        point, point_box = point_estimate(table), point_estimate(box)
        for k in ("cgF1", "pmF1", "IL_MCC"):
            assert point[k] == pytest.approx(logged[f"val/{name}/{k}"], abs=1e-6), (name, k)
            assert point_box[k] == pytest.approx(logged[f"val/{name}/{k}_box"], abs=1e-6), (name, k)
    assert any(logged[f"val/{name}/IL_MCC"] != 0 for name in ("annotations", "general"))
