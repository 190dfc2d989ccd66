"""cgF1 family: hand-computed cases, file loading errors, and parity with the official `cgf1_eval.py`."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from adapt.evaluation.cgf1 import evaluate_pairs, load_predictions, load_saco_truth, official_keys
from adapt.evaluation.pairs import PairPrediction, PairTruth
from sam3_model.errors import DatasetError

E4, E6 = 1e-4, 1e-6


def truth(pid: int, boxes=(), crowd=(), exhaustive=True, masks=None, hw=(10, 10)) -> PairTruth:
    """A box-only (or masked) GT pair."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    c = np.asarray(crowd if crowd else [False] * len(b), bool)
    return PairTruth(pid, f"phrase{pid}", hw[0], hw[1], exhaustive, b, masks or [], c)


def pred(pid: int, boxes=(), scores=(), masks=None) -> PairPrediction:
    """A prediction set of one pair."""
    return PairPrediction(pid, np.asarray(scores, np.float64), np.asarray(boxes, np.float64).reshape(-1, 4), masks or [])


def f1(p: float, r: float) -> float:
    """The official box-level F1 with its epsilon."""
    return 2 * p * r / (p + r + E4)


def approx(x: float) -> pytest.approx:
    """Tight comparison."""
    return pytest.approx(x, abs=1e-12)


# ------------------------------------------------------------------------------------------ hand cases


def test_true_negative_only():
    # One negative pair, its only prediction below 0.5: IL_TN, no box-level counts at all.
    r = evaluate_pairs([{1: truth(1)}], {1: pred(1, [[0, 0, 2, 2]], [0.3])}, "bbox")
    m = r.metrics
    assert (m["IL_TN"], m["IL_TP"], m["IL_FP"], m["IL_FN"]) == (1, 0, 0, 0)
    assert m["TP@0.5"] == m["FP@0.5"] == m["FN@0.5"] == 0
    # MCC = (0*1 - 0*0) / (sqrt(0) + 1e-6) = 0; precision = 0 / (0 + 1e-4) = 0; cgF1 = pmF1 * 0 = 0
    assert m["IL_MCC"] == 0 and m["precision"] == 0 and m["cgF1"] == 0
    # no pair with G>0 and D>0: positive_macro_F1 = 0/0 = NaN, which the official summary reports as -1
    assert m["positive_macro_F1"] == -1
    assert r.per_pair[0].il_outcome == "TN" and r.per_pair[0].local_f1 is None


def test_image_level_false_positive_and_pm_fp():
    # A: one GT, a perfect prediction (IL_TP). B: negative phrase with a 0.7 prediction (IL_FP). C: TN.
    truths = {1: truth(1, [[0, 0, 4, 4]]), 2: truth(2), 3: truth(3)}
    preds = {1: pred(1, [[0, 0, 4, 4]], [0.9]), 2: pred(2, [[1, 1, 2, 2]], [0.7])}
    m = evaluate_pairs([truths], preds, "bbox").metrics
    # box level at every threshold: TP = 1, FP = 1 (from B), FN = 0; pmFP = 0 (B is negative)
    assert (m["TP@0.5"], m["FP@0.5"], m["FN@0.5"], m["pmFP@0.5"]) == (1, 1, 0, 0)
    p, pm_p, rec = 1 / (1 + 1 + E4), 1 / (1 + 0 + E4), 1 / (1 + 0 + E4)
    assert m["precision"] == approx(p) and m["recall"] == approx(rec)
    assert m["F1"] == approx(f1(p, rec)) and m["pmF1"] == approx(f1(pm_p, rec))
    # image level: TP=1, FP=1, TN=1, FN=0 -> MCC = (1*1 - 1*0) / (sqrt((1+1)(1+0)(1+1)(1+0)) + 1e-6) = 1/(2+1e-6)
    mcc = 1 / (2 + E6)
    assert m["IL_MCC"] == approx(mcc)
    assert m["IL_precision"] == approx(1 / (2 + E6)) and m["IL_recall"] == approx(1 / (1 + E6))
    assert m["IL_FPR"] == approx(1 / (1 + 1 + E6))
    assert m["cgF1"] == approx(f1(pm_p, rec) * mcc) and m["cgF1@0.75"] == approx(f1(pm_p, rec) * mcc)
    # positive_macro_F1: only pair A (G>0, D>0): its local F1 = f1(1/(1+1e-4), 1/(1+1e-4))
    assert m["positive_macro_F1"] == approx(f1(1 / (1 + E4), 1 / (1 + E4)))


def test_score_threshold_boundary_and_below():
    # Pair 1: the GT's only prediction has score 0.49 -> ignored -> IL_FN with FN = 1.
    # Pair 2: score exactly 0.5 -> kept (score >= 0.5) -> TP.
    truths = {1: truth(1, [[0, 0, 4, 4]]), 2: truth(2, [[0, 0, 4, 4]])}
    preds = {1: pred(1, [[0, 0, 4, 4]], [0.49]), 2: pred(2, [[0, 0, 4, 4]], [0.5])}
    r = evaluate_pairs([truths], preds, "bbox")
    assert [o.il_outcome for o in r.per_pair] == ["FN", "TP"]
    m = r.metrics
    assert (m["TP@0.5"], m["FP@0.5"], m["FN@0.5"]) == (1, 0, 1)
    # positive_macro_F1 sums the FN pair's 0 but divides by the 1 pair with D>0 (official quirk)
    assert m["positive_macro_F1"] == approx(f1(1 / (1 + E4), 1 / (1 + E4)))
    assert r.per_pair[0].local_f1 == [0.0] * 10


def test_iou_exactly_at_threshold():
    # GT [0,0,4,4] (area 16), prediction [0,0,4,3] (area 12): IoU = 12/16 = 0.75 exactly -> TP at t <= 0.75.
    m = evaluate_pairs([{1: truth(1, [[0, 0, 4, 4]])}], {1: pred(1, [[0, 0, 4, 3]], [0.9])}, "bbox").metrics
    one = f1(1 / (1 + E4), 1 / (1 + E4))  # TP=1, FP=0, FN=0
    assert m["F1@0.75"] == approx(one)
    assert m["F1"] == approx(6 * one / 10)  # 6 of the 10 thresholds (0.50..0.75) hit, the other 4 give F1 = 0
    # one pair, IL_TP only: MCC = (1*0 - 0*0)/(0 + 1e-6) = 0, so cgF1 = 0 whatever pmF1 is
    assert m["cgF1@0.75"] == 0 and m["pmF1@0.75"] == approx(one)


def test_crowds():
    # Pair 1: a crowd GT and a normal GT; one prediction on each. The crowd GT is dropped:
    # TP = 1 (normal), FP = 1 (the prediction on the crowd), FN = 0 (crowd GTs are never FNs).
    # Pair 2: only a crowd GT, no prediction -> G = 0, D = 0 -> TN.
    truths = {1: truth(1, [[0, 0, 4, 4], [5, 5, 4, 4]], crowd=[True, False]), 2: truth(2, [[0, 0, 4, 4]], crowd=[True])}
    preds = {1: pred(1, [[0, 0, 4, 4], [5, 5, 4, 4]], [0.9, 0.9])}
    r = evaluate_pairs([truths], preds, "bbox")
    m = r.metrics
    assert (m["TP@0.5"], m["FP@0.5"], m["FN@0.5"], m["pmFP@0.5"]) == (1, 1, 0, 1)
    assert [o.il_outcome for o in r.per_pair] == ["TP", "TN"] and r.per_pair[0].num_gt == 1
    assert m["precision@0.5"] == approx(1 / (2 + E4))


def test_non_exhaustive_pair_skipped():
    truths = {1: truth(1, [[0, 0, 4, 4]]), 2: truth(2, [[0, 0, 4, 4]], exhaustive=False)}
    r = evaluate_pairs([truths], {2: pred(2, [[5, 5, 1, 1]], [0.9])}, "bbox")
    assert r.metrics["num_pairs"] == 1 and r.metrics["num_pairs_skipped_non_exhaustive"] == 1
    assert r.metrics["IL_FN"] == 1 and r.metrics["FP@0.5"] == 0  # pair 2's FP is not counted


def test_oracle_two_files():
    a = {
        1: truth(1, [[0, 0, 4, 4]]),  # file 0 GT misses the prediction, file 1 GT matches it -> file 1
        2: truth(2, [[0, 0, 4, 4]]),  # identical in both files -> tie -> file 0 kept
        3: truth(3, [[0, 0, 4, 4]]),  # no prediction: file 0 FN, file 1 negative -> TN replaces
        4: truth(4),  # no prediction: file 0 TN, file 1 FN -> the TN stays (a non-TN never replaces a TN)
        5: truth(5, [[0, 0, 4, 4]]),  # non-exhaustive in file 1 only -> skipped
    }
    b = {
        1: truth(1, [[5, 5, 4, 4]]), 2: truth(2, [[0, 0, 4, 4]]), 3: truth(3),
        4: truth(4, [[0, 0, 4, 4]]), 5: truth(5, [[0, 0, 4, 4]], exhaustive=False),
    }  # fmt: skip
    preds = {1: pred(1, [[5, 5, 4, 4]], [0.9]), 2: pred(2, [[0, 0, 4, 4]], [0.9])}
    r = evaluate_pairs([a, b], preds, "bbox")
    got = {o.pair_id: (o.gt_file, o.il_outcome) for o in r.per_pair}
    assert got == {1: (1, "TP"), 2: (0, "TP"), 3: (1, "TN"), 4: (0, "TN")}
    m = r.metrics
    # pairs 1, 2 perfect: TP = 2, FP = FN = 0; image level TP = 2, TN = 2 -> MCC = 4 / (sqrt(2*2*2*2) + 1e-6)
    assert (m["TP@0.5"], m["FP@0.5"], m["FN@0.5"]) == (2, 0, 0)
    assert m["IL_MCC"] == approx(4 / (4 + E6)) and m["num_pairs_skipped_non_exhaustive"] == 1
    p = 2 / (2 + E4)
    assert m["cgF1"] == approx(f1(p, p) * 4 / (4 + E6))


def _square_mask(h: int, w: int, *rects: tuple[int, int, int, int]) -> dict:
    """Compressed RLE of the union of (row0, row1, col0, col1) rectangles."""
    m = np.zeros((h, w), np.uint8, order="F")
    for r0, r1, c0, c1 in rects:
        m[r0:r1, c0:c1] = 1
    return mask_utils.encode(m)


def test_bbox_vs_segm():
    # GT mask: two 2x2 squares at the left and right ends of a 10x10 image (area 8, box [0,0,10,2], area 20).
    # Prediction: the left square only (area 4, box [0,0,2,2], area 4).
    # segm IoU = 4/8 = 0.5 -> TP at 0.5 only; bbox IoU = 4/20 = 0.2 -> no TP anywhere.
    gt_mask = _square_mask(10, 10, (0, 2, 0, 2), (0, 2, 8, 10))
    pr_mask = _square_mask(10, 10, (0, 2, 0, 2))
    t = {1: truth(1, [mask_utils.toBbox(gt_mask).tolist()], masks=[gt_mask])}
    p = {1: pred(1, [mask_utils.toBbox(pr_mask).tolist()], [0.9], masks=[pr_mask])}
    segm, bbox = evaluate_pairs([t], p, "segm").metrics, evaluate_pairs([t], p, "bbox").metrics
    assert segm["TP@0.5"] == 1 and segm["F1@0.75"] == 0
    assert segm["F1"] == approx(f1(1 / (1 + E4), 1 / (1 + E4)) / 10)  # one threshold of ten
    assert bbox["TP@0.5"] == 0 and bbox["FP@0.5"] == 1 and bbox["FN@0.5"] == 1 and bbox["F1"] == 0


def test_f1_by_threshold_shape():
    r = evaluate_pairs([{1: truth(1, [[0, 0, 4, 4]])}], {1: pred(1, [[0, 0, 4, 3]], [0.9])}, "bbox")
    assert set(r.f1_by_threshold) == {"cgF1", "pmF1", "F1"} and all(len(v) == 10 for v in r.f1_by_threshold.values())
    assert r.f1_by_threshold["F1"][5] > 0 and r.f1_by_threshold["F1"][6] == 0


# ------------------------------------------------------------------------------------------- file loading


def _gt_json(anns=None, images=None) -> dict:
    """A minimal SA-Co GT dict."""
    images = images or [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4, "text_input": "cat",
                         "is_instance_exhaustive": True}]  # fmt: skip
    return {"images": images, "annotations": anns or [], "categories": [{"id": 1, "name": "object"}]}


def _write(tmp_path: Path, name: str, data) -> Path:
    """Write JSON (or raw text) to a file."""
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _rle_str(h: int, w: int) -> dict:
    """A full-image mask as compressed RLE with str counts."""
    rle = mask_utils.encode(np.ones((h, w), np.uint8, order="F"))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def test_loaders_roundtrip_and_category_drop(tmp_path):
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0, "area": 16,
           "segmentation": {"size": [4, 4], "counts": [0, 16]}}  # uncompressed RLE  # fmt: skip
    gt = load_saco_truth(_write(tmp_path, "gt.json", _gt_json([ann, dict(ann, id=2, category_id=9)])))
    assert gt.num_dropped_category == 1 and len(gt[1].masks) == 1 and gt[1].phrase == "cat"
    preds = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [0, 0, 1, 1], "segmentation": _rle_str(4, 4)},
             {"image_id": 1, "category_id": 2, "score": 0.9, "bbox": [0, 0, 1, 1]}]  # fmt: skip
    pr = load_predictions(_write(tmp_path, "p.json", preds), gt)
    assert pr.num_dropped_category == 1 and len(pr[1].scores) == 1
    assert evaluate_pairs([gt], pr, "segm").metrics["TP@0.5"] == 1


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "no such ground truth file"),
        ("truncated", "looks truncated"),
        ("no_key", "images[0]: missing required key 'is_instance_exhaustive'"),
        ("score", "[0]: score 1.5 is outside [0, 1]"),
        ("size", "[0]: RLE size [3, 4]"),
        ("unknown", "[0]: image_id 7 is not a pair"),
    ],
)
def test_loader_errors(tmp_path, case, needle):
    gt_path = _write(tmp_path, "gt.json", _gt_json())
    good = {"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [0, 0, 1, 1]}
    with pytest.raises(DatasetError) as err:
        if case == "missing":
            load_saco_truth(tmp_path / "nope.json")
        elif case == "truncated":
            load_saco_truth(_write(tmp_path, "t.json", json.dumps(_gt_json())[:-5]))
        elif case == "no_key":
            img = {"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}
            load_saco_truth(_write(tmp_path, "k.json", _gt_json(images=[img])))
        else:
            bad = {"score": dict(good, score=1.5), "size": dict(good, segmentation=_rle_str(3, 4)),
                   "unknown": dict(good, image_id=7)}[case]  # fmt: skip
            load_predictions(_write(tmp_path, "p.json", [bad]), load_saco_truth(gt_path))
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


# ------------------------------------------------------------------------------- parity with official


def _official_path() -> Path | None:
    """`sam3/eval/cgf1_eval.py` from $SAM3_CGF1_EVAL or an installed `sam3` distribution (not imported)."""
    env = os.environ.get("SAM3_CGF1_EVAL")
    if env:
        return Path(env) if Path(env).is_file() else None
    try:
        dist = importlib.metadata.distribution("sam3")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith("sam3/eval/cgf1_eval.py"):
            path = Path(dist.locate_file(f))
            return path if path.is_file() else None
    return None


@pytest.fixture(scope="module")
def official():
    """The official module, loaded by file path only (the `sam3` package __init__ imports the whole model)."""
    path = _official_path()
    if path is None:
        pytest.skip("official cgf1_eval.py not found: `pip install sam3 --no-deps` or set SAM3_CGF1_EVAL=path")
    spec = importlib.util.spec_from_file_location("_official_cgf1_eval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rand_rle(rng: np.random.Generator, h: int, w: int, near: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """A random rectangle-ish mask (optionally a jittered copy of `near`) as str-count RLE, and the array."""
    if near is not None:
        m = np.roll(near, (int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(0, 1))
        if rng.random() < 0.3:
            m = m & (rng.random((h, w)) < 0.95)
    else:
        r0, c0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
        m = np.zeros((h, w), bool)
        m[r0 : r0 + rng.integers(2, h - r0), c0 : c0 + rng.integers(2, w - c0)] = True
    if not m.any():
        m[0, 0] = True
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}, m


def _box_norm(rle: dict, h: int, w: int) -> list[float]:
    """Normalised xywh box of a mask (SA-Co units)."""
    x, y, bw, bh = mask_utils.toBbox(rle).tolist()
    return [x / w, y / h, bw / w, bh / h]


def _random_dataset(seed: int, n_files: int, n_pairs: int = 50) -> tuple[list[dict], list[dict]]:
    """GT dicts (one per file) and COCO-results predictions with negatives, crowds, ties, dropped categories."""
    rng = np.random.default_rng(seed)
    h, w = 20, 24
    images, base, preds = [], [], []
    for pid in range(1, n_pairs + 1):
        images.append({"id": pid, "file_name": f"{pid}.jpg", "height": h, "width": w, "text_input": f"np{pid}",
                       "is_instance_exhaustive": bool(rng.random() < 0.85)})  # fmt: skip
        inst = [] if rng.random() < 0.45 else [_rand_rle(rng, h, w) for _ in range(rng.integers(1, 5))]
        base.append(inst)
        for rle, m in inst:  # predictions near the GTs, sometimes duplicated (Hungarian ties)
            for _ in range(int(rng.choice([0, 1, 1, 2]))):
                p_rle, _ = _rand_rle(rng, h, w, near=m)
                preds.append(_pred(rng, pid, p_rle, h, w))
        for _ in range(int(rng.integers(0, 3))):  # spurious predictions, also on negative phrases
            preds.append(_pred(rng, pid, _rand_rle(rng, h, w)[0], h, w))
    files = [_gt_file(rng, images, base, k, h, w) for k in range(n_files)]
    return files, preds


def _pred(rng: np.random.Generator, pid: int, rle: dict, h: int, w: int) -> dict:
    """One prediction; scores include exactly 0.5 and values below it; some categories are not GT ones."""
    score = float(rng.choice([0.5, 0.3, 0.49, 0.9, 0.95, 0.7, rng.random()]))
    cat = int(rng.choice([1, 1, 1, 3, 2]))
    return {"image_id": pid, "category_id": cat, "score": score, "bbox": _box_norm(rle, h, w), "segmentation": rle}


def _gt_file(rng: np.random.Generator, images: list, base: list, k: int, h: int, w: int) -> dict:
    """One annotator's GT: file 0 is the base, later files drop / add instances and flip exhaustivity."""
    imgs, anns = [], []
    for img, inst in zip(images, base):
        img = dict(img)
        if k > 0:
            img["is_instance_exhaustive"] = bool(rng.random() < 0.9)
            inst = [x for x in inst if rng.random() < 0.7] + ([_rand_rle(rng, h, w)] if rng.random() < 0.2 else [])
        imgs.append(img)
        for rle, _ in inst:
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": int(rng.choice([1, 3])),
                         "bbox": _box_norm(rle, h, w), "segmentation": rle, "area": float(mask_utils.area(rle)),
                         "iscrowd": int(rng.random() < 0.15)})  # fmt: skip
    return {"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]}


def _run_official(official, gt_paths: list[str], pred_path: str, iou_type: str) -> dict[str, float]:
    """The official evaluator's output dict (its prints silenced)."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = official.CGF1Evaluator(gt_path=gt_paths, iou_type=iou_type)
        return ev.evaluate(pred_path)


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize("n_files", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_parity_with_official(official, tmp_path, seed, n_files, iou_type):
    files, preds = _random_dataset(seed * 10 + n_files, n_files)
    gt_paths = [str(_write(tmp_path, f"gt{k}.json", f)) for k, f in enumerate(files)]
    pred_path = str(_write(tmp_path, "preds.json", preds))
    expected = _run_official(official, gt_paths, pred_path, iou_type)
    truths = [load_saco_truth(p) for p in gt_paths]
    ours = official_keys(evaluate_pairs(truths, load_predictions(pred_path, truths[0]), iou_type).metrics, iou_type)
    assert set(ours) == set(expected)
    bad = {k: (ours[k], expected[k]) for k in expected if abs(ours[k] - expected[k]) > 1e-6}
    assert not bad, bad
