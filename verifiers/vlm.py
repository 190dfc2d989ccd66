"""A vision-language model as mask (MV) and exhaustivity (EV) verifier, with the paper's multiple-choice formats.

Any transformers image-text-to-text chat model works (Qwen2.5-VL, SmolVLM, LLaVA, ...). Each question shows one
rendered view (`verifiers.render`) and lists the options under letters, shuffled deterministically per question.
Two ways to read the answer:

* "logits" (default): one forward pass; at the next-token position the logits of the option letters are
  softmaxed over the options present, giving a probability per option.
* "generate": greedy decoding of a short answer, parsed by `parse_choice`; an answer that matches no option is
  an UNPARSED verdict (never an accept), counted in `VlmVerifier.counts`.
"""

from __future__ import annotations

import hashlib
import inspect
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sam3_model.errors import ConfigError, ModelLoadError

from .base import EV_OPTIONS, MV_OPTIONS, UNPARSED, Verdict, VerifyItem, thresholded
from .render import render_boxes_view, render_mask_view

LETTERS = "ABCDEFGHIJ"

MV_DESCRIPTIONS: dict[str, str] = {
    "accept": "Accept: the label describes the object and the mask covers one whole instance of it with good "
              "boundaries (not necessarily pixel-perfect, but with all its important parts).",
    "accept_as_text": "Accept as text: the mask covers text written in the image that matches the label.",
    "flag_label": "Flag label: the label refers to sensitive attributes of people.",
    "whole_image": "Whole image: the label describes the entire scene rather than an object in it.",
    "reject": "Reject: the label does not describe the object, or the mask is incomplete, covers several objects "
              "or has bad boundaries.",
}

EV_DESCRIPTIONS: dict[str, str] = {
    "accept": "Accept: every instance of '{phrase}' is covered by a red box (with no boxes: there is no "
              "'{phrase}' in the image).",
    "reject": "Reject: some instances of '{phrase}' are not covered, and at least some of them can be told apart.",
    "reject_unseparated": "Reject, unseparated: some instances of '{phrase}' are not covered, but they cannot be "
                          "separated from each other (a dense crowd or texture).",
    "flag_label": "Flag label: the label refers to sensitive attributes of people.",
    "whole_image": "Whole image: the label describes the entire scene.",
    "ungroundable": "Ungroundable: the label is vague or malformed, cannot be located in an image, or you are "
                    "unsure.",
}

MV_INTRO = ("You are an expert annotator of object segmentation masks. The image has two halves: on the left, the "
            "original image with a box around the region of interest; on the right, a zoomed-in view of that region "
            "with the mask overlaid in fuchsia and outlined.")
EV_INTRO = "You are an expert annotator checking that every object matching a label has been annotated."


@dataclass
class Question:
    """One multiple-choice question: the rendered view, the prompt text and which letter names which option."""

    image: Image.Image
    prompt: str
    letters: dict[str, str]  # letter -> option, in the order shown


def option_letters(options: Sequence[str], shuffle: bool, seed_text: str) -> dict[str, str]:
    """Letters "A".. mapped to `options`, in a random order seeded by `seed_text` when `shuffle`, else in order."""
    order = list(options)
    if shuffle:
        digest = hashlib.sha256(seed_text.encode("utf-8")).digest()
        random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return {LETTERS[i]: option for i, option in enumerate(order)}


def mv_prompt(phrase: str, letters: dict[str, str]) -> str:
    """The MV question for `phrase`, its options listed under `letters`."""
    lines = [MV_INTRO, f"Rate the fuchsia mask for the label '{phrase}':"]
    lines += [f"({letter}) {MV_DESCRIPTIONS[option]}" for letter, option in letters.items()]
    lines.append("Answer with the letter only.")
    return "\n".join(lines)


def ev_prompt(phrase: str, letters: dict[str, str], has_boxes: bool) -> str:
    """The EV question for `phrase` (the negative form when there are no boxes), options under `letters`."""
    question = (f"Are all instances of '{phrase}' in the image covered by the red boxes?" if has_boxes
                else f"There are no boxes: is '{phrase}' absent from the image?")
    lines = [EV_INTRO, question]
    lines += [f"({letter}) {EV_DESCRIPTIONS[option].format(phrase=phrase)}" for letter, option in letters.items()]
    lines.append("Answer with the letter only.")
    return "\n".join(lines)


_MARKUP = re.compile(r"[*`#\"'\u2018\u2019\u201c\u201d]")
_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+|correct\s+|best\s+)?(?:answer|option|choice|verdict|rating)"
                     r"(?:\s+is)?\s*[:=\-]?\s*", re.IGNORECASE)
_BARE_LETTER = re.compile(r"[\(\[]?\s*([A-Za-z])\s*[\)\]]?")
_LEADING_LETTER = re.compile(r"[\(\[]\s*([A-Za-z])\s*[\)\]]|([A-Za-z])\s*[\).:\]]\s")
_PAREN_LETTER = re.compile(r"\(\s*([A-Za-z])\s*\)")


def _words(text: str) -> str:
    """Lower case, every run of non-alphanumerics as one space, padded with spaces for whole-word search."""
    return " " + " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split()) + " "


def parse_choice(text: str, letters_to_options: dict[str, str]) -> str | None:
    """The option a free-text answer picks ("B", "(B)", "B)", "Answer: B", "**B**", "b", "Reject"); None if unclear."""
    upper = {letter.upper(): option for letter, option in letters_to_options.items()}
    s = _MARKUP.sub("", text).strip()
    s = _PREFIX.sub("", s).strip().rstrip(".,;:!?").strip()
    if not s:
        return None
    # 1. The whole answer is a letter, maybe in brackets: "B", "(B)", "b", "[C]".
    m = _BARE_LETTER.fullmatch(s)
    if m:
        return upper.get(m.group(1).upper())
    # 2. It starts with a letter and a delimiter: "(B) reject", "B) reject", "B. Reject", "B: ...".
    m = _LEADING_LETTER.match(s + " ")
    if m and (m.group(1) or m.group(2)).upper() in upper:
        return upper[(m.group(1) or m.group(2)).upper()]
    # 3. It names exactly one option in words ("Reject", "accept as text"): longer names first, so "accept as
    #    text" is not also read as "accept".
    words = _words(s)
    found = set()
    for option in sorted(set(upper.values()), key=lambda o: -len(o)):
        name = _words(option)
        if name in words:
            found.add(option)
            words = words.replace(name, " | ")
    if found:
        return found.pop() if len(found) == 1 else None
    # 4. Exactly one distinct bracketed letter anywhere: "I would say (C) here".
    letters = {x.upper() for x in _PAREN_LETTER.findall(s)} & set(upper)
    if len(letters) == 1:
        return upper[letters.pop()]
    return None


def _letter_token_ids(tokenizer: Any, letter: str) -> list[int]:
    """Token ids that spell `letter` as one token: "A", " A" (leading-space variants such as "ĠA" / "▁A")."""
    ids: set[int] = set()
    for text in (letter, " " + letter):
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(int(encoded[0]))
    unk = getattr(tokenizer, "unk_token_id", None)
    for token in (letter, "\u0120" + letter, "\u2581" + letter):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != unk and token_id >= 0:
            ids.add(token_id)
    return sorted(ids)


def _reason(name: str, letter: str, option: str, p: float, letters: dict[str, str]) -> str:
    """What the model chose, with the letter mapping it saw."""
    mapping = " ".join(f"{k}={v}" for k, v in letters.items())
    return f"{name} chose ({letter}) {option}, p={p:.2f} [{mapping}]"


class VlmVerifier:
    """A VLM that answers the paper's MV and EV multiple-choice questions; implements both verifier protocols."""

    def __init__(self, model: Any, processor: Any, *, name: str = "vlm", threshold: float = 0.5,
                 mode: str = "logits", batch_size: int = 8, shuffle_options: bool = True, seed: int = 0,
                 max_new_tokens: int = 8, view_size: int = 384) -> None:
        if mode not in ("logits", "generate"):
            raise ConfigError(f"VlmVerifier mode must be 'logits' or 'generate', got {mode!r}")
        if batch_size < 1:
            raise ConfigError(f"VlmVerifier batch_size must be >= 1, got {batch_size}")
        self.model = model.eval() if hasattr(model, "eval") else model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"  # the last position is every row's next token; generation needs it
        self.name, self.threshold, self.mode = name, float(threshold), mode
        self.batch_size, self.shuffle_options, self.seed = int(batch_size), bool(shuffle_options), int(seed)
        self.max_new_tokens, self.view_size = int(max_new_tokens), int(view_size)
        self.letter_ids = {letter: _letter_token_ids(self.tokenizer, letter) for letter in LETTERS[:6]}
        missing = [letter for letter, ids in self.letter_ids.items() if not ids]
        if missing and mode == "logits":
            raise ConfigError(f"the tokenizer of {name} has no single token for option letters {missing}: "
                              "use mode='generate'")
        try:
            self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            self._keeps_logits = False
        self.counts: Counter[str] = Counter()  # options chosen so far (UNPARSED included), after thresholding

    @classmethod
    def from_config(cls, config: Any) -> VlmVerifier:
        """The verifier a `verifiers.configs.VlmConfig` describes."""
        return cls.from_pretrained(config.model, threshold=config.threshold, mode=config.mode,
                                   batch_size=config.batch_size, max_new_tokens=config.max_new_tokens)

    @property
    def torch_module(self) -> Any:
        """The model the data engine moves to its device."""
        return self.model

    @classmethod
    def from_pretrained(cls, model_id: str, *, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, **kwargs: Any) -> VlmVerifier:
        """Load a hub id or directory with AutoProcessor + AutoModelForImageTextToText; ModelLoadError on failure."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        elif isinstance(dtype, str) and dtype != "auto":
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ConfigError(f"unknown dtype {dtype!r} for VLM verifier {model_id!r}: use e.g. 'bfloat16'")
            dtype = getattr(torch, dtype)
        local = Path(str(model_id)).expanduser()
        if (str(model_id).startswith(("/", ".", "~")) or str(model_id).count("/") > 1) and not local.is_dir():
            raise ModelLoadError(f"could not load VLM verifier {model_id!r}: no such directory (give a saved model "
                                 "directory or a hub id such as 'Qwen/Qwen2.5-VL-3B-Instruct')")
        try:
            processor = AutoProcessor.from_pretrained(model_id)
            model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=dtype).to(device)
        except Exception as exc:  # any loading failure is a user-facing error with one line
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"could not load VLM verifier {model_id!r}: {detail[:300]}") from exc
        if getattr(processor, "chat_template", None) is None and getattr(
                getattr(processor, "tokenizer", None), "chat_template", None) is None:
            raise ModelLoadError(f"VLM verifier {model_id!r} has no chat template: use an instruction-tuned model")
        return cls(model, processor, **kwargs)

    # ---- questions ----

    def mv_question(self, item: VerifyItem, index: int) -> Question:
        """The MV question about instance `index` of `item`."""
        letters = option_letters(MV_OPTIONS, self.shuffle_options,
                                 f"{self.seed}|mv|{item.key}|{item.phrase}|{index}")
        view = render_mask_view(item.image, item.instances[index], size=self.view_size)
        return Question(view, mv_prompt(item.phrase, letters), letters)

    def ev_question(self, item: VerifyItem) -> Question:
        """The EV question about `item` (all its instances boxed in red)."""
        letters = option_letters(EV_OPTIONS, self.shuffle_options, f"{self.seed}|ev|{item.key}|{item.phrase}")
        view = render_boxes_view(item.image, item.instances)
        return Question(view, ev_prompt(item.phrase, letters, bool(item.instances)), letters)

    # ---- the two verifier protocols ----

    def verify_masks(self, items: Sequence[VerifyItem]) -> list[list[Verdict]]:
        """One verdict per instance of each item (an empty list for an item without instances)."""
        questions = [self.mv_question(item, i) for item in items for i in range(len(item.instances))]
        verdicts = iter(self.ask(questions))
        return [[next(verdicts) for _ in item.instances] for item in items]

    def verify_exhaustivity(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        """One verdict per item; an item without instances asks whether the phrase is absent (the negative case)."""
        return self.ask([self.ev_question(item) for item in items])

    def ask(self, questions: Sequence[Question]) -> list[Verdict]:
        """Thresholded verdicts for `questions`, `batch_size` at a time."""
        verdicts: list[Verdict] = []
        for start in range(0, len(questions), self.batch_size):
            chunk = questions[start:start + self.batch_size]
            raw = self._ask_logits(chunk) if self.mode == "logits" else self._ask_generate(chunk)
            for verdict in raw:
                verdict = thresholded(verdict, self.threshold)
                self.counts[verdict.option] += 1
                verdicts.append(verdict)
        return verdicts

    # ---- model calls ----

    def _inputs(self, questions: Sequence[Question]) -> dict[str, torch.Tensor]:
        """Chat-templated, left-padded processor inputs on the model's device (floats in the model's dtype)."""
        texts = [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.prompt}]}],
            add_generation_prompt=True, tokenize=False) for q in questions]
        batch = self.processor(text=texts, images=[[q.image] for q in questions], return_tensors="pt",
                               padding=True)
        device = getattr(self.model, "device", torch.device("cpu"))
        dtype = getattr(self.model, "dtype", torch.float32)
        return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
                for k, v in batch.items()}

    def _letter_logits(self, logits: torch.Tensor, letters: dict[str, str]) -> torch.Tensor:
        """(V,) next-token logits -> (n_options,) one logit per letter: logsumexp over its token variants."""
        return torch.stack([torch.logsumexp(logits[self.letter_ids[letter]], dim=0) for letter in letters])

    @torch.no_grad()
    def _ask_logits(self, questions: Sequence[Question]) -> list[Verdict]:
        """One forward pass; softmax over the option letters' logits at each row's last position."""
        inputs = self._inputs(questions)
        mask = inputs["attention_mask"]  # (B, T), left padded
        if self._keeps_logits and self.tokenizer.padding_side == "left":
            last = self.model(**inputs, logits_to_keep=1).logits[:, -1, :]  # (B, V)
        else:
            logits = self.model(**inputs).logits  # (B, T, V)
            positions = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(dim=1)  # (B,) last real
            last = logits[torch.arange(len(questions), device=logits.device), positions]  # (B, V)
        last = last.float().cpu()
        verdicts = []
        for row, q in zip(last, questions):
            probs = torch.softmax(self._letter_logits(row, q.letters), dim=0)  # (n_options,)
            best = int(probs.argmax())
            letter, option = list(q.letters.items())[best]
            p_accept = float(probs[list(q.letters.values()).index("accept")])
            verdicts.append(Verdict(self.name, option, float(probs[best]), p_accept,
                                    _reason(self.name, letter, option, float(probs[best]), q.letters)))
        return verdicts

    @torch.no_grad()
    def _ask_generate(self, questions: Sequence[Question]) -> list[Verdict]:
        """Greedy answers parsed with `parse_choice`; score = probability of the first generated token."""
        inputs = self._inputs(questions)
        prompt_len = inputs["input_ids"].shape[1]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  output_scores=True, return_dict_in_generate=True, pad_token_id=pad)
        new = out.sequences[:, prompt_len:].cpu()  # (B, n_new)
        answers = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        first = torch.softmax(out.scores[0].float().cpu(), dim=-1)  # (B, V) first-step distribution
        verdicts = []
        for i, (answer, q) in enumerate(zip(answers, questions)):
            option = parse_choice(answer, q.letters)
            if option is None:
                shown = answer.strip()[:40]
                verdicts.append(Verdict(self.name, UNPARSED, 0.0, 0.0,
                                        f"{self.name} answer {shown!r} matches no option"))
                continue
            letter = next(k for k, v in q.letters.items() if v == option)
            score = float(first[i, new[i, 0]])
            # The accept score: the answer's own probability when it accepts, else the first-step probability
            # of the accept letter (so thresholds and calibration still see a graded number).
            accept_letter = next(k for k, v in q.letters.items() if v == "accept")
            p_accept = score if option == "accept" else float(first[i, self.letter_ids[accept_letter]].sum())
            reason = _reason(self.name, letter, option, score, q.letters) + f" answer={answer.strip()[:40]!r}"
            verdicts.append(Verdict(self.name, option, score, p_accept, reason))
        return verdicts


__all__ = ["VlmVerifier", "Question", "parse_choice", "option_letters", "mv_prompt", "ev_prompt",
           "MV_DESCRIPTIONS", "EV_DESCRIPTIONS"]
