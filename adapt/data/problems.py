"""Bad dataset entries: stop with a message listing the first problems, or skip them and say how many."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sam3_model.errors import DatasetError

from .records import DatasetProblem

ON_ERROR = ("stop", "skip")
SHOWN = 5  # problems listed in the message

log = logging.getLogger(__name__)


def resolve_problems(problems: Sequence[DatasetProblem], on_error: str, what: str) -> int:
    """Raise `DatasetError` naming the first problems (on_error "stop"), or log and return their count ("skip")."""
    if on_error not in ON_ERROR:
        raise DatasetError(f"data.on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if not problems:
        return 0
    if on_error == "stop":
        shown = "; ".join(str(p) for p in problems[:SHOWN])
        more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        raise DatasetError(f"{what}: {len(problems)} bad entries: {shown}{more}. Fix them, or pass "
                           "--data.on_error=skip to leave them out")
    log.warning("%s: skipped %d bad entries (first: %s)", what, len(problems), problems[0])
    return len(problems)
