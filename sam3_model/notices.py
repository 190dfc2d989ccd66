"""One-line notices on stderr for things a user should know but that are not errors (what a name resolved to)."""

from __future__ import annotations

import sys


def notice(message: str) -> None:
    """Print `sam3-adapt: note: <message>` on stderr."""
    print(f"sam3-adapt: note: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Print `sam3-adapt: warning: <message>` on stderr."""
    print(f"sam3-adapt: warning: {message}", file=sys.stderr, flush=True)
