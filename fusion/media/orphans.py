"""Child processes end with their parent: a worker whose parent was killed exits instead of working on alone.

A parent killed with SIGKILL runs no clean-up, so its pool workers and decoding processes would otherwise go on with
the file in hand (and hold their memory) for minutes. Each child watches its parent instead: a daemon thread checks
every PARENT_POLL_S whether the process has been re-parented (its parent id changed, to init or a subreaper) and
then exits at once. This works on any POSIX system and whichever thread started the child (Linux's
PR_SET_PDEATHSIG fires when the creating *thread* ends, which would kill a decoding process started from a
short-lived thread of a user's program).
"""

from __future__ import annotations

import os
import threading
import time

PARENT_POLL_S = 0.5  # seconds between checks: an orphan works on for at most about this long


def exit_with_parent(parent: int | None = None) -> None:
    """Start the watch in this (child) process; parent: the process id to outlive none (default: the current one)."""
    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # no clean-up: the parent that would read our results is gone

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
