"""The VLM verifier: rendered views, answer parsing, and MV/EV verdicts from a tiny random LLaVA loaded offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_vlm import build_tiny_vlm

from sam3_model.errors import ModelLoadError
from sam3_model.records import Instance, encode_mask
from verifiers.base import (
    EV_OPTIONS,
    MV_OPTIONS,
    UNPARSED,
    ExhaustivityVerifier,
    MaskVerifier,
    VerifyItem,
)
from verifiers.render import render_boxes_view, render_mask_view
from verifiers.vlm import VlmVerifier, _letter_token_ids, option_letters, parse_choice

FUCHSIA = np.array([255, 0, 255])
RED = np.array([255, 0, 0])


def _box_instance(h: int, w: int, box: tuple[int, int, int, int], score: float = 0.9) -> Instance:
    """A rectangular instance: mask and box agree."""
    mask = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1
    return Instance(encode_mask(mask), tuple(float(v) for v in box), score)


def _bbox(hits: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inclusive extent of a bool (H, W) array."""
    ys, xs = np.nonzero(hits)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _is(pixels: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Bool (H, W): pixels exactly `colour`."""
    return np.all(pixels == colour, axis=-1)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory) -> Path:
    """The tiny LLaVA saved once for the module."""
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture(scope="module")
def items() -> list[VerifyItem]:
    """Three pairs with 2, 0 and 1 instances and different phrase lengths (so batches are padded)."""
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8))
    other = Image.fromarray((rng.random((40, 30, 3)) * 255).astype(np.uint8))
    return [
        VerifyItem(image, "red square", [_box_instance(48, 64, (5, 5, 20, 20)), _box_instance(48, 64, (30, 10, 60, 40))],
                   key="img0"),
        VerifyItem(image, "blue disc with a long descriptive phrase", [], key="img0"),
        VerifyItem(other, "cat", [_box_instance(40, 30, (0, 0, 3, 3))], key="img1"),
    ]


def _force_tokens(model, token_ids: list[int], boost: float = 100.0):
    """Hook the LM head so generation emits `token_ids` in order (one per call), then keeps emitting the last one."""
    calls = [0]

    def hook(module, args, output):
        step = min(calls[0], len(token_ids) - 1)
        calls[0] += 1
        bias = torch.zeros(output.shape[-1], dtype=output.dtype)
        bias[token_ids[step]] = boost
        return output + bias

    return model.lm_head.register_forward_hook(hook), calls


# ---------------------------------------------------------------- rendering


def test_mask_view_boxes_the_instance_and_overlays_the_zoomed_mask():
    h, w = 60, 80
    image = Image.new("RGB", (w, h), (40, 120, 40))
    view = render_mask_view(image, _box_instance(h, w, (20, 10, 40, 30)), size=64)
    assert view.size == (128, 64)
    px = np.asarray(view).astype(int)
    left, right = px[:, :64], px[:, 64:]
    # Left: the image scaled by 64/80 = 0.8 and centred (8 px above and below); the box (20,10,40,30) -> (16,16,32,32).
    x0, y0, x1, y1 = _bbox(_is(left, FUCHSIA))
    assert abs(x0 - 16) <= 1 and abs(y0 - 16) <= 1 and abs(x1 - 31) <= 1 and abs(y1 - 31) <= 1
    assert tuple(left[2, 32]) == (114, 114, 114)  # the letterbox band above the image
    assert tuple(left[12, 32]) == (40, 120, 40)  # the image, outside the box
    # Right: crop (10,0)-(50,40) (box side 20 plus 50% context each side), upscaled x1.6: mask at 16..48.
    x0, y0, x1, y1 = _bbox(_is(right, FUCHSIA))  # the solid outline
    assert abs(x0 - 16) <= 1 and abs(y0 - 16) <= 1 and abs(x1 - 47) <= 1 and abs(y1 - 47) <= 1
    centre = right[32, 32]
    assert not _is(centre[None], FUCHSIA)[0]  # semi-transparent inside, not solid
    assert centre[0] > centre[1] + 40 and centre[2] > centre[1] + 40  # but tinted fuchsia
    assert tuple(right[2, 2]) == (40, 120, 40)  # context outside the mask is untouched


def test_mask_view_zooms_small_objects_and_survives_empty_masks_and_tiny_images():
    image = Image.new("RGB", (200, 200), (30, 30, 30))
    one_pixel = _box_instance(200, 200, (100, 100, 101, 101))
    right = np.asarray(render_mask_view(image, one_pixel, size=64))[:, 64:].astype(int)
    tinted = (right[..., 0] > 100) & (right[..., 2] > 100) & (right[..., 1] < 60)
    assert tinted.sum() >= 4  # 1 px of 40 000 becomes several px of the 64 x 64 zoom

    empty = Instance(encode_mask(np.zeros((200, 200), np.uint8)), (0.0, 0.0, 0.0, 0.0), 0.1)
    view = np.asarray(render_mask_view(image, empty, size=32)).astype(int)
    assert view.shape == (32, 64, 3)
    assert not _is(view, FUCHSIA).any()  # nothing to box or overlay

    tiny = Image.new("RGB", (2, 3), (10, 200, 10))
    view = render_mask_view(tiny, _box_instance(3, 2, (0, 0, 1, 1)), size=16)
    assert view.size == (32, 16)
    mismatched = Instance(encode_mask(np.ones((6, 4), np.uint8)), (0.0, 0.0, 2.0, 3.0))  # RLE twice the image size
    assert render_mask_view(tiny, mismatched, size=16).size == (32, 16)


def test_boxes_view_draws_red_boxes_only_on_box_edges_scaled_to_the_image():
    image = Image.new("RGB", (200, 100), (0, 80, 160))
    view = np.asarray(render_boxes_view(image, [_box_instance(100, 200, (10, 20, 60, 70)),
                                                _box_instance(100, 200, (120, 5, 190, 95))])).astype(int)
    assert view.shape == (100, 200, 3)
    red = _is(view, RED)
    assert red[20, 30] and red[69, 30] and red[45, 10] and red[45, 59]  # the four edges of the first box
    assert red[5, 150] and red[50, 189]  # the second box
    assert not red[45, 35] and not red[90, 90]  # inside a box, and outside both
    assert tuple(view[45, 35]) == (0, 80, 160)

    thin = _is(np.asarray(render_boxes_view(image, [_box_instance(100, 200, (10, 20, 60, 70))])), RED)[45].sum()
    big = Image.new("RGB", (2000, 1000), (0, 80, 160))
    thick = _is(np.asarray(render_boxes_view(big, [_box_instance(1000, 2000, (100, 200, 600, 700))])), RED)[450].sum()
    assert thick > thin * 5  # line width follows the image size

    empty = Instance(encode_mask(np.zeros((100, 200), np.uint8)), (0.0, 0.0, 0.0, 0.0))
    assert not _is(np.asarray(render_boxes_view(image, [empty])), RED).any()
    assert np.array_equal(np.asarray(render_boxes_view(image, [])), np.asarray(image))


# ---------------------------------------------------------------- parsing and letters

LETTERS = {"A": "whole_image", "B": "reject", "C": "accept", "D": "accept_as_text", "E": "flag_label"}


@pytest.mark.parametrize("text, expected", [
    ("B", "reject"),
    ("  (B) ", "reject"),
    ("B)", "reject"),
    ("B.", "reject"),
    ("b", "reject"),
    ("Answer: B", "reject"),
    ("The answer is (C).", "accept"),
    ("**C**", "accept"),
    ("[D]", "accept_as_text"),
    ("C) Accept: the label describes the object", "accept"),
    ("Reject", "reject"),
    ("accept as text", "accept_as_text"),
    ("Accept_as_text.", "accept_as_text"),
    ("whole image", "whole_image"),
    ("I would go with (E) here", "flag_label"),
    ("", None),
    ("   ", None),
    ("zzzzzzzz", None),
    ("v\x0f\ufffd\ufffd( m\ufffd:", None),
    ("F", None),  # a letter that names no option here
    ("accept or reject", None),  # two options: ambiguous
    ("(A) or (B)", "whole_image"),  # leads with a letter
    ("maybe (A), maybe (B)", None),
    ("A dog", None),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, LETTERS) == expected


def test_option_letters_are_deterministic_and_shuffled_per_question():
    a = option_letters(EV_OPTIONS, True, "0|ev|img0|cat")
    assert a == option_letters(EV_OPTIONS, True, "0|ev|img0|cat")
    assert sorted(a) == list("ABCDEF") and sorted(a.values()) == sorted(EV_OPTIONS)
    shuffles = {tuple(option_letters(MV_OPTIONS, True, f"0|mv|img|{i}").values()) for i in range(20)}
    assert len(shuffles) > 5
    assert list(option_letters(MV_OPTIONS, False, "x").values()) == list(MV_OPTIONS)


def test_letter_ids_include_leading_space_variants():
    class SentencePieceLike:  # encodes "A" as "▁A", " A" as two tokens
        unk_token_id = 0
        vocab = {"<unk>": 0, "A": 5, "\u2581A": 6, "\u2581": 7}

        def encode(self, text, add_special_tokens=False):
            return [6] if text == "A" else [7, 6]

        def convert_tokens_to_ids(self, token):
            return self.vocab.get(token, 0)

    assert _letter_token_ids(SentencePieceLike(), "A") == [5, 6]
    assert _letter_token_ids(SentencePieceLike(), "B") == []


# ---------------------------------------------------------------- the verifier on a tiny LLaVA


def test_from_pretrained_offline_one_verdict_per_instance_and_item(vlm_dir, items):
    verifier = VlmVerifier.from_pretrained(str(vlm_dir), batch_size=2, view_size=64)
    assert isinstance(verifier, MaskVerifier) and isinstance(verifier, ExhaustivityVerifier)
    mv = verifier.verify_masks(items)
    assert [len(v) for v in mv] == [2, 0, 1]
    ev = verifier.verify_exhaustivity(items)
    assert len(ev) == 3
    for verdict in [v for row in mv for v in row]:
        assert verdict.option in MV_OPTIONS and verdict.verifier == "vlm"
    for verdict in ev:
        assert verdict.option in EV_OPTIONS
    for verdict in [v for row in mv for v in row] + ev:
        assert 0.0 <= verdict.accept_score <= 1.0 and 0.0 < verdict.score <= 1.0
        if "threshold" not in verdict.reason:  # an unthresholded argmax: its probability, at least 1/n options
            assert verdict.score >= verdict.accept_score and verdict.score >= 1 / 6 - 1e-6
            assert verdict.reason.startswith("vlm chose (") and f") {verdict.option}, p=" in verdict.reason
        assert verdict.score + (verdict.accept_score if verdict.option != "accept" else 0) <= 1.0 + 1e-6
    assert sum(verifier.counts.values()) == 6
    assert verifier.verify_masks([items[1]]) == [[]] and verifier.verify_exhaustivity([]) == []
    assert sum(verifier.counts.values()) == 6  # nothing was asked
    assert "There are no boxes" in verifier.ev_question(items[1]).prompt  # the negative form
    assert "covered by the red boxes" in verifier.ev_question(items[0]).prompt
    assert "fuchsia mask for the label 'red square'" in verifier.mv_question(items[0], 1).prompt


def test_logits_accept_score_is_the_softmax_of_the_accept_letter(vlm_dir, items):
    verifier = VlmVerifier.from_pretrained(str(vlm_dir), batch_size=3, view_size=64, threshold=0.0)
    verdicts = verifier.verify_masks(items)
    # Independently: one unpadded forward of the second instance's question, the full (T, V) logits.
    question = verifier.mv_question(items[0], 1)
    processor, model = verifier.processor, verifier.model
    vocab = processor.tokenizer.get_vocab()
    assert not any("\u0120" + letter in vocab for letter in "ABCDEF")  # the letters are single tokens only
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question.prompt}]}],
        add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[question.image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]  # (V,)
    letter_ids = [vocab[letter] for letter in question.letters]
    probs = torch.softmax(logits[letter_ids], dim=0)  # (5,)
    accept = list(question.letters.values()).index("accept")
    assert verdicts[0][1].accept_score == pytest.approx(float(probs[accept]), abs=1e-4)
    assert verdicts[0][1].score == pytest.approx(float(probs.max()), abs=1e-4)
    chosen_letter = list(question.letters)[int(probs.argmax())]
    assert verdicts[0][1].option == question.letters[chosen_letter]
    assert f"({chosen_letter})" in verdicts[0][1].reason
    # The mapping shown to the model is recorded in the reason.
    assert " ".join(f"{k}={v}" for k, v in question.letters.items()) in verdicts[0][1].reason


def test_threshold_turns_a_low_probability_accept_into_a_reject(vlm_dir, items):
    results = {}
    for threshold in (0.5, 0.95):
        verifier = VlmVerifier.from_pretrained(str(vlm_dir), threshold=threshold, shuffle_options=False,
                                               view_size=64)
        a_id = verifier.processor.tokenizer.convert_tokens_to_ids("A")  # "A" is accept when not shuffled
        bias = torch.zeros(verifier.model.config.text_config.vocab_size)
        bias[a_id] = 2.0
        verifier.model.lm_head.register_forward_hook(lambda m, args, out: out + bias)
        results[threshold] = verifier.verify_exhaustivity(items)
    for loose, strict in zip(results[0.5], results[0.95]):
        assert 0.5 < loose.accept_score < 0.95  # a moderately confident accept
        assert loose.option == "accept" and loose.score == pytest.approx(loose.accept_score)
        assert strict.option == "reject" and strict.accept_score == pytest.approx(loose.accept_score)
        assert strict.score == pytest.approx(1 - loose.accept_score)
        assert "< threshold 0.950" in strict.reason and "chose (A) accept" in strict.reason


def test_shuffled_letters_are_deterministic_and_seeded(vlm_dir, items):
    first = VlmVerifier.from_pretrained(str(vlm_dir), seed=3, view_size=64).verify_masks(items)
    again = VlmVerifier.from_pretrained(str(vlm_dir), seed=3, view_size=64).verify_masks(items)
    assert first == again
    mappings = [v.reason.split("[")[1] for row in first for v in row]
    assert len(set(mappings)) > 1  # each question gets its own order, recorded in the reason
    seeded = [VlmVerifier.from_pretrained(str(vlm_dir), seed=seed) for seed in (3, 4)]
    questions = [(0, 0), (0, 1), (2, 0)]
    letters = [[v.mv_question(items[i], j).letters for i, j in questions] for v in seeded]
    assert letters[0] != letters[1]  # another seed, other orders
    assert [v.reason.split("[")[1].rstrip("]") for row in first for v in row] == [
        " ".join(f"{k}={o}" for k, o in m.items()) for m in letters[0]]


def test_batching_gives_the_same_verdicts_as_one_at_a_time(vlm_dir, items):
    one = VlmVerifier.from_pretrained(str(vlm_dir), batch_size=1, view_size=64)
    many = VlmVerifier.from_pretrained(str(vlm_dir), batch_size=8, view_size=64)
    for a, b in zip([v for row in one.verify_masks(items) for v in row] + one.verify_exhaustivity(items),
                    [v for row in many.verify_masks(items) for v in row] + many.verify_exhaustivity(items)):
        assert a.option == b.option
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.accept_score == pytest.approx(b.accept_score, abs=1e-4)


def test_generate_mode_counts_unparsed_answers(vlm_dir, items):
    verifier = VlmVerifier.from_pretrained(str(vlm_dir), mode="generate", batch_size=2, max_new_tokens=4,
                                           view_size=64)
    z_id = verifier.processor.tokenizer.convert_tokens_to_ids("z")
    _force_tokens(verifier.model, [z_id])  # the model answers "zzzz"
    mv, ev = verifier.verify_masks(items), verifier.verify_exhaustivity(items)
    for verdict in [v for row in mv for v in row] + ev:
        assert verdict.option == UNPARSED and not verdict.accepted
        assert verdict.score == 0.0 and verdict.accept_score == 0.0
        assert "'zzzz'" in verdict.reason and "matches no option" in verdict.reason
    assert verifier.counts[UNPARSED] == 6


def test_generate_mode_parses_the_answer_and_scores_its_first_token(vlm_dir, items):
    verifier = VlmVerifier.from_pretrained(str(vlm_dir), mode="generate", shuffle_options=False, view_size=64,
                                           threshold=0.5)
    tok = verifier.processor.tokenizer
    hook, calls = _force_tokens(verifier.model, [tok.convert_tokens_to_ids("C"), tok.eos_token_id])
    mv = verifier.verify_masks(items[:1])[0]  # answer "C": MV option 3 = flag_label
    assert [v.option for v in mv] == ["flag_label", "flag_label"]
    assert all(v.score == pytest.approx(1.0) and v.accept_score < 1e-6 for v in mv)
    assert "chose (C) flag_label" in mv[0].reason and "answer='C'" in mv[0].reason
    hook.remove()
    hook, calls = _force_tokens(verifier.model, [tok.convert_tokens_to_ids("A"), tok.eos_token_id])
    ev = verifier.verify_exhaustivity(items)  # answer "A": accept
    assert [v.option for v in ev] == ["accept"] * 3
    assert all(v.accepted and v.accept_score == v.score == pytest.approx(1.0) for v in ev)
    hook.remove()


def test_from_pretrained_missing_dir_raises_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        VlmVerifier.from_pretrained(str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(info.value) and "\n" not in str(info.value)
