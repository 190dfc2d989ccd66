"""Worker processes that end with their parent: a killed `recipe run` must not leave trainings running."""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.5


def die_with_parent(poll_seconds: float = POLL_SECONDS) -> None:
    """End this process as soon as its parent is gone, even if the parent was killed with SIGKILL.

    A daemon thread watches the parent id: when the parent dies, the process is re-parented (its parent id
    changes) and exits at once with `os._exit`, skipping cleanup that could block on the dead parent. Call it
    first thing in a worker (a process pool's initializer).
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(poll_seconds)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
