"""The SAM 3 text tokenizer, built offline from CLIP's BPE vocabulary shipped in open-clip-torch.

SAM 3 uses OpenAI CLIP's byte-level BPE (49,408 tokens, context 32). The vocabulary and merges are derived
deterministically from `bpe_simple_vocab_16e6.txt.gz`, so the token ids equal the official tokenizer's.
"""

from __future__ import annotations

import copy
import gzip
import importlib.resources
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

CLIP_VOCAB_SIZE = 49408
SAM3_CONTEXT_LENGTH = 32
_NUM_MERGES = 49152 - 256 - 2  # 48,894 merges, as in CLIP's SimpleTokenizer


def bpe_vocab_path() -> Path:
    """Path of CLIP's BPE vocabulary file inside the installed open_clip package."""
    path = Path(str(importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall open-clip-torch")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def clip_vocab_and_merges(bpe_gz_path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Derive CLIP's token -> id table and BPE merges from the gzipped merges file."""
    lines = gzip.open(bpe_gz_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    byte_tokens = list(_bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{bpe_gz_path}: expected {CLIP_VOCAB_SIZE} tokens, derived {len(tokens)}")
    return {tok: i for i, tok in enumerate(tokens)}, merges


@lru_cache(maxsize=4)
def _cached_tokenizer(max_length: int) -> CLIPTokenizer:
    vocab, merges = clip_vocab_and_merges(bpe_vocab_path())
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_offline_tokenizer(max_length: int = SAM3_CONTEXT_LENGTH) -> CLIPTokenizer:
    """A CLIP tokenizer with SAM 3's token ids, built without the Hub (a fresh copy each call)."""
    return copy.deepcopy(_cached_tokenizer(max_length))
