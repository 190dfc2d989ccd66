"""Train and eval transforms: official sizes, boxes and masks kept consistent, padding, flips, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from adapt.data.transforms import AugmentConfig, EvalTransform, TrainTransform, official_train_sizes
from sam3_model.errors import ConfigError, ImageError, TargetError

S = 112


def _scene(seed: int = 0, h: int = 150, w: int = 200, n: int = 4):
    """An image (pixel values 20..235, never the padding value) with n rectangles: boxes and masks agree."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 236, (h, w, 3), dtype=np.uint8)
    boxes, masks = [], []
    for _ in range(n):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        x1, y1 = x0 + int(rng.integers(10, 40)), y0 + int(rng.integers(10, 40))
        mask = np.zeros((h, w), np.uint8)
        mask[y0:y1, x0:x1] = 1
        boxes.append([x0, y0, x1, y1])
        masks.append(mask)
    return image, np.array(boxes, np.float32), masks  # (H, W, 3), (n, 4) xyxy px, n x (H, W)


def _mask_box(mask: torch.Tensor) -> np.ndarray:
    ys, xs = np.nonzero(mask.numpy())
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)  # xyxy px, exclusive max


def test_official_sizes():
    assert official_train_sizes(1008) == list(range(480, 993, 32))
    small = official_train_sizes(S)
    assert small == sorted(set(small)) and all(8 <= s <= S for s in small) and len(small) == 17
    assert official_train_sizes(2016) == [2 * s for s in range(480, 993, 32)]
    with pytest.raises(ConfigError):
        official_train_sizes(4)


@pytest.mark.parametrize("augment", [AugmentConfig(), AugmentConfig(hflip=0.5, vflip=0.5, color_jitter=0.4)])
def test_train_transform_keeps_masks_boxes_and_placement_consistent(augment):
    image, boxes, masks = _scene()
    transform = TrainTransform(S, augment, seed=0)
    placements = set()
    for _ in range(12):
        out = transform(image, boxes, masks)
        assert out.pixel_values.shape == (3, S, S) and out.pixel_values.dtype == torch.float32
        assert out.keep.all() and out.masks.shape == (4, S, S) and out.masks.dtype == torch.bool
        assert out.size_h == out.size_w and out.size_h in official_train_sizes(S)
        assert 0 <= out.top <= S - out.size_h and 0 <= out.left <= S - out.size_w
        placements.add((out.top, out.left, out.size_h))
        for box, mask in zip(out.boxes_xyxy_px, out.masks):
            np.testing.assert_allclose(_mask_box(mask), box, atol=1.0)
            assert box[0] >= out.left - 1e-4 and box[2] <= out.left + out.size_w + 1e-4
            assert box[1] >= out.top - 1e-4 and box[3] <= out.top + out.size_h + 1e-4
        content = torch.zeros(S, S, dtype=torch.bool)
        content[out.top:out.top + out.size_h, out.left:out.left + out.size_w] = True
        assert (out.pixel_values[:, ~content] == -1).all()  # padding is 0 before normalisation
        assert not out.masks[:, ~content].any()
        if not augment.color_jitter:
            assert (out.pixel_values[:, content] > -1).all()
    assert len(placements) > 6  # sizes and positions vary


def test_train_transform_is_reproducible_under_a_seed():
    image, boxes, masks = _scene()
    a, b = TrainTransform(S, seed=5), TrainTransform(S, seed=5)
    for _ in range(3):
        out_a, out_b = a(image, boxes, masks), b(image, boxes, masks)
        assert torch.equal(out_a.pixel_values, out_b.pixel_values) and torch.equal(out_a.masks, out_b.masks)
        np.testing.assert_array_equal(out_a.boxes_xyxy_px, out_b.boxes_xyxy_px)
    other = [(o.top, o.left, o.size_h) for o in (TrainTransform(S, seed=6)(image, boxes, masks) for _ in range(1))]
    first = [(o.top, o.left, o.size_h) for o in (TrainTransform(S, seed=5)(image, boxes, masks) for _ in range(1))]
    assert other != first


def test_train_transform_without_seed_follows_numpy_global_seed():
    image, boxes, masks = _scene()
    transform = TrainTransform(S)
    np.random.seed(11)
    first = [transform(image, boxes, masks) for _ in range(3)]
    np.random.seed(11)
    again = [transform(image, boxes, masks) for _ in range(3)]
    for a, b in zip(first, again):
        assert torch.equal(a.pixel_values, b.pixel_values) and (a.top, a.left, a.size_h) == (b.top, b.left, b.size_h)


class _Placements(Dataset):
    def __init__(self, transform):
        self.transform = transform
        self.image, self.boxes, self.masks = _scene()

    def __len__(self):
        return 8

    def __getitem__(self, i):
        out = self.transform(self.image, self.boxes, self.masks)
        return torch.tensor([out.top, out.left, out.size_h])


@pytest.mark.parametrize("seed", [None, 3])
def test_dataloader_workers_draw_different_reproducible_streams(seed):
    def run():
        torch.manual_seed(0)  # what seed_everything does in the main process
        loader = DataLoader(_Placements(TrainTransform(S, seed=seed)), batch_size=1, num_workers=2)
        return torch.cat(list(loader)).view(-1, 3).tolist()

    first = run()
    assert first == run()
    # Items 0 and 1 are the first call of workers 0 and 1; (2, 3) their second calls.
    assert first[0::2] != first[1::2]


def test_eval_transform_fills_the_canvas_and_is_deterministic():
    image, boxes, masks = _scene(h=150, w=200)
    transform = EvalTransform(S)
    out, again = transform(image, boxes, masks), transform(image, boxes, masks)
    assert (out.top, out.left, out.size_h, out.size_w) == (0, 0, S, S)
    assert torch.equal(out.pixel_values, again.pixel_values) and torch.equal(out.masks, again.masks)
    expected = boxes * np.array([S / 200, S / 150, S / 200, S / 150], np.float32)
    np.testing.assert_allclose(out.boxes_xyxy_px, expected, rtol=1e-5)
    for box, mask in zip(out.boxes_xyxy_px, out.masks):
        np.testing.assert_allclose(_mask_box(mask), box, atol=1.0)
    assert out.pixel_values.min() >= -1 and out.pixel_values.max() <= 1


def test_hflip_mirrors_image_boxes_and_masks_together():
    image, boxes, masks = _scene()
    plain = TrainTransform(S, AugmentConfig(scale_jitter=False), seed=0)(image, boxes, masks)
    flipped = TrainTransform(S, AugmentConfig(scale_jitter=False, hflip=1.0), seed=0)(image, boxes, masks)
    assert torch.equal(flipped.pixel_values, plain.pixel_values.flip(-1))
    assert torch.equal(flipped.masks, plain.masks.flip(-1))
    mirrored = plain.boxes_xyxy_px[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1]) + np.array([S, 0, S, 0])
    np.testing.assert_allclose(flipped.boxes_xyxy_px, mirrored, atol=1e-4)
    assert (plain.top, plain.left, plain.size_h, plain.size_w) == (0, 0, S, S)


def test_vflip_mirrors_vertically():
    image, boxes, masks = _scene()
    plain = TrainTransform(S, AugmentConfig(scale_jitter=False), seed=0)(image, boxes, masks)
    flipped = TrainTransform(S, AugmentConfig(scale_jitter=False, vflip=1.0), seed=0)(image, boxes, masks)
    assert torch.equal(flipped.masks, plain.masks.flip(-2))
    np.testing.assert_allclose(flipped.boxes_xyxy_px[:, 1], S - plain.boxes_xyxy_px[:, 3], atol=1e-4)


@pytest.mark.parametrize("as_array", [False, True])
def test_empty_instances_are_dropped_and_flagged(as_array):
    image, boxes, masks = _scene(n=2)
    tiny = np.zeros(image.shape[:2], np.uint8)
    tiny[10, 10] = 1  # one pixel: vanishes when 200 px shrink to at most 110
    degenerate = np.zeros(image.shape[:2], np.uint8)
    boxes = np.concatenate([boxes, [[10, 10, 11, 11], [50, 50, 50, 60]]]).astype(np.float32)
    all_masks = masks + [tiny, degenerate]
    out = TrainTransform(S, seed=0)(image, boxes, np.stack(all_masks) if as_array else all_masks)
    assert out.keep.tolist() == [True, True, False, False]
    assert out.boxes_xyxy_px.shape == (2, 4) and out.masks.shape == (2, S, S)
    for box, mask in zip(out.boxes_xyxy_px, out.masks):
        np.testing.assert_allclose(_mask_box(mask), box, atol=1.0)
    as_bool = EvalTransform(S)(image, boxes, [m.astype(bool) for m in all_masks])
    assert torch.equal(as_bool.masks, EvalTransform(S)(image, boxes, all_masks).masks)
    box_only = EvalTransform(S)(image, boxes, None)
    assert box_only.masks is None and box_only.keep.tolist() == [True, True, True, False]
    none = TrainTransform(S, seed=0)(image, np.zeros((0, 4)), [])
    assert none.boxes_xyxy_px.shape == (0, 4) and none.masks.shape == (0, S, S) and none.keep.shape == (0,)


def test_boxes_outside_the_image_are_clipped():
    image, _, _ = _scene()
    out = EvalTransform(S)(image, np.array([[-20, -10, 300, 400]], np.float32), None)
    np.testing.assert_allclose(out.boxes_xyxy_px, [[0, 0, S, S]], atol=1e-4)


def test_user_mistakes_raise_one_line_errors():
    image, boxes, masks = _scene()
    with pytest.raises(ConfigError):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ConfigError):
        AugmentConfig(color_jitter=float("nan"))
    with pytest.raises(ImageError):
        EvalTransform(S)(image.astype(np.float32), boxes, masks)
    with pytest.raises(TargetError):
        EvalTransform(S)(image, boxes, masks[:2])
    with pytest.raises(TargetError):
        EvalTransform(S)(image, boxes, [m[:10] for m in masks])
