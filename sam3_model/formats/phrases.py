"""Phrases: a non-empty string that can be encoded as UTF-8 (a lone surrogate, e.g. from undecodable command-line
bytes, would crash the tokenizer at the first training step)."""

from __future__ import annotations

from typing import Any

from .problem import FormatProblem


def check_phrase(text: Any) -> str:
    """A usable phrase: a non-empty string (stripped) that encodes as UTF-8, or `FormatProblem`."""
    if not isinstance(text, str) or not text.strip():
        raise FormatProblem(f"a phrase must be a non-empty string, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise FormatProblem(f"phrase {text!r} cannot be encoded as UTF-8 (character {err.start}: "
                            f"{text[err.start]!r}); was it read with the wrong encoding?") from None
    return text.strip()
