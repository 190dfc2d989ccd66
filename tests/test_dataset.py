"""PhraseDataset: images and masks loaded, transformed, split per phrase; hard negatives; the collated batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.data.batch import PhraseCollator
from adapt.data.dataset import PhraseDataset, decode_mask_c_order
from adapt.data.records import ImageSample, PhraseInstances
from adapt.data.transforms import EvalTransform, TrainTransform
from sam3_model.errors import ConfigError, DatasetError, ImageError
from sam3_model.records import decode_mask, encode_mask

S = 112
H, W = 120, 160


def _instances(phrase: str, boxes_xywh: list[list[int]], with_masks: bool = True) -> PhraseInstances:
    """A phrase whose masks are its filled boxes."""
    masks = []
    for x, y, w, h in boxes_xywh:
        mask = np.zeros((H, W), np.uint8)
        mask[y:y + h, x:x + w] = 1
        masks.append(encode_mask(mask))
    return PhraseInstances(phrase, np.array(boxes_xywh, np.float32).reshape(-1, 4), masks if with_masks else None,
                           exhaustive=phrase != "person")


def _sample(tmp_path: Path, image_id: int, phrases: list[PhraseInstances]) -> ImageSample:
    path = tmp_path / f"{image_id}.png"
    Image.fromarray(np.random.default_rng(image_id).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
    return ImageSample(path, W, H, phrases, image_id, dataset="syn")


@pytest.fixture
def samples(tmp_path):
    return [
        _sample(tmp_path, 1, [_instances("Red car", [[10, 20, 40, 30], [80, 60, 50, 40]]),
                              _instances("person", [[5, 5, 20, 50]]),
                              _instances("tree", [])]),
        _sample(tmp_path, 2, [_instances("dog", [[30, 30, 60, 60], [3, 14, 1, 1]]),
                              _instances("cat", [])]),
    ]


def _mask_box(mask: torch.Tensor) -> np.ndarray:
    ys, xs = np.nonzero(mask.numpy())
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_item_has_phrases_targets_on_the_canvas_and_meta(samples):
    item = PhraseDataset(samples, EvalTransform(S))[0]
    assert item.pixel_values.shape == (3, S, S)
    assert item.phrases == ["Red car", "person", "tree"] and item.exhaustive == [True, False, True]
    assert [len(b) for b in item.boxes_cxcywh] == [2, 1, 0] and [len(m) for m in item.masks] == [2, 1, 0]
    # Eval is a plain stretch: box (10, 20, 40, 30) xywh -> cxcywh normalised by the image size.
    torch.testing.assert_close(item.boxes_cxcywh[0][0], torch.tensor([30 / W, 35 / H, 40 / W, 30 / H]))
    for boxes, masks in zip(item.boxes_cxcywh, item.masks):
        assert masks.dtype == torch.bool and masks.shape[1:] == (S, S)
        for box, mask in zip(boxes, masks):
            xyxy = np.concatenate([box[:2] - box[2:] / 2, box[:2] + box[2:] / 2]) * S
            np.testing.assert_allclose(_mask_box(mask), xyxy, atol=1.0)
    meta = item.meta
    assert (meta.image_id, meta.dataset, meta.height, meta.width, meta.index) == (1, "syn", H, W, 0)
    assert (meta.top, meta.left, meta.size_h, meta.size_w) == (0, 0, S, S)


def test_train_item_boxes_lie_in_the_placement(samples):
    np.random.seed(0)
    dataset = PhraseDataset(samples, TrainTransform(S))
    for _ in range(5):
        item = dataset[0]
        meta = item.meta
        assert meta.size_h < S and meta.top + meta.size_h <= S and meta.left + meta.size_w <= S
        boxes = torch.cat(item.boxes_cxcywh) * S  # (T, 4) cxcywh px
        assert (boxes[:, 0] - boxes[:, 2] / 2 >= meta.left - 1e-3).all()
        assert (boxes[:, 1] + boxes[:, 3] / 2 <= meta.top + meta.size_h + 1e-3).all()
        assert (item.pixel_values[:, : meta.top] == -1).all()


def test_instances_emptied_by_the_transform_leave_their_phrase(samples):
    item = PhraseDataset(samples, EvalTransform(S))[1]  # nearest 160 -> 112 skips column 3: the 1 px "dog" vanishes
    assert item.phrases == ["dog", "cat"]
    assert [len(b) for b in item.boxes_cxcywh] == [1, 0] and [len(m) for m in item.masks] == [1, 0]


def test_hard_negatives_never_repeat_a_phrase_of_the_image(samples):
    vocabulary = ["red car", "TREE", "bicycle", "bus", "bus", "Person", "lamp"]
    dataset = PhraseDataset(samples, EvalTransform(S), hard_negatives=vocabulary, negatives_per_image=2)
    np.random.seed(0)
    drawn = set()
    for _ in range(30):
        item = dataset[0]
        negatives = item.phrases[3:]
        assert item.phrases[:3] == ["Red car", "person", "tree"]
        assert len(negatives) == 2 and len(set(negatives)) == 2
        assert {n.lower() for n in negatives} <= {"bicycle", "bus", "lamp"}
        assert all(len(b) == 0 for b in item.boxes_cxcywh[3:]) and all(m.shape == (0, S, S) for m in item.masks[3:])
        assert item.exhaustive[3:] == [True, True]
        drawn.update(negatives)
    assert drawn == {"bicycle", "bus", "lamp"}
    np.random.seed(4)
    first = [dataset[0].phrases for _ in range(5)]
    np.random.seed(4)
    assert first == [dataset[0].phrases for _ in range(5)]


def test_fewer_candidates_than_asked_gives_what_there_is(samples):
    dataset = PhraseDataset(samples, EvalTransform(S), hard_negatives=["dog", "Cat", "bird"], negatives_per_image=3)
    assert dataset[1].phrases == ["dog", "cat", "bird"]


def test_phrases_with_too_many_instances_are_dropped(samples):
    dataset = PhraseDataset(samples, EvalTransform(S), hard_negatives=["red car", "boat"], negatives_per_image=1,
                            max_instances_per_phrase=1)
    item = dataset[0]
    assert item.phrases == ["person", "tree", "boat"]  # "red car" neither kept nor re-added as a negative
    assert [len(b) for b in item.boxes_cxcywh] == [1, 0, 0]


def test_collated_batch_validates(samples):
    from sam3_model.tokenizer import build_offline_tokenizer

    np.random.seed(0)
    dataset = PhraseDataset(samples, TrainTransform(S), hard_negatives=["boat", "lamp"], negatives_per_image=1)
    batch = PhraseCollator(build_offline_tokenizer())([dataset[0], dataset[1]])
    assert batch.pixel_values.shape == (2, 3, S, S) and batch.num_queries == 4 + 3
    assert batch.image_index.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert batch.targets.num_boxes.tolist()[:3] == [2, 1, 0] and batch.targets.packed_masks().shape[1:] == (S, S)
    assert batch.input_ids.shape == (7, 32) and batch.exhaustive[1] is False
    assert [m.index for m in batch.meta] == [0, 1]


def test_box_only_dataset_has_no_masks(tmp_path):
    sample = _sample(tmp_path, 3, [_instances("car", [[10, 20, 40, 30]], with_masks=False)])
    item = PhraseDataset([sample], TrainTransform(S, seed=0))[0]
    assert item.masks is None and len(item.boxes_cxcywh[0]) == 1


def test_dataset_mistakes_raise(tmp_path, samples):
    empty = _sample(tmp_path, 4, [])
    with pytest.raises(ConfigError, match="no phrase"):
        PhraseDataset([empty], EvalTransform(S))
    assert PhraseDataset([empty], EvalTransform(S), hard_negatives=["boat"], negatives_per_image=1)[0].phrases == \
        ["boat"]
    with pytest.raises(ConfigError):
        PhraseDataset(samples, EvalTransform(S), negatives_per_image=1)
    mixed = _sample(tmp_path, 5, [_instances("car", [[10, 20, 40, 30]], with_masks=False)])
    with pytest.raises(DatasetError):
        PhraseDataset(samples + [mixed], EvalTransform(S))
    wrong_size = _sample(tmp_path, 6, [_instances("car", [[10, 20, 40, 30]])])
    wrong_size.width = W + 1
    with pytest.raises(ImageError, match="annotation says"):
        PhraseDataset([wrong_size], EvalTransform(S))[0]


def test_decode_mask_c_order_equals_decode_mask():
    rng = np.random.default_rng(0)
    for mask in [rng.random((30, 40)) < 0.3, np.zeros((30, 40), bool), np.ones((30, 40), bool)]:
        rle = encode_mask(mask)
        decoded = decode_mask_c_order(rle)
        assert decoded.flags["C_CONTIGUOUS"] and decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, decode_mask(rle))


def test_max_negatives_keeps_every_positive_and_at_most_k_negatives(tmp_path):
    negatives = [_instances(f"absent {k}", []) for k in range(6)]
    sample = _sample(tmp_path, 3, [_instances("dog", [[30, 30, 60, 60]]), *negatives])
    dataset = PhraseDataset([sample], EvalTransform(S), max_negatives=2)
    np.random.seed(0)
    drawn = [dataset[0].phrases for _ in range(20)]
    assert all(p[0] == "dog" and len(p) == 3 for p in drawn)
    assert len({tuple(p) for p in drawn}) > 1  # a different pair of negatives on different draws
    only_negatives = _sample(tmp_path, 4, negatives)
    assert len(PhraseDataset([only_negatives], EvalTransform(S), max_negatives=0)[0].phrases) == 1
    with pytest.raises(ConfigError, match="max_negatives"):
        PhraseDataset([sample], EvalTransform(S), max_negatives=-1)


def test_keep_phrases_restricts_a_dataset_to_an_ontology(samples):
    from adapt.data.datamodule import keep_phrases

    kept = keep_phrases(samples, ["red car", "Tree"])
    assert [[p.phrase for p in s.phrases] for s in kept] == [["Red car", "tree"]]  # image 2 has neither: dropped
    assert [p.phrase for p in samples[0].phrases] == ["Red car", "person", "tree"]  # the input is not changed
