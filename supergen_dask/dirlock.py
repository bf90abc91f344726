"""One run per render directory: an advisory lock held for the whole run.

Two runs on one directory would both do all the work and race on its records. The lock is an
``flock`` on ``<render dir>/.supergen.lock``, released by the operating system when its process
ends however it ends (``kill -9`` included), so a stale lock cannot outlive a dead run; and while
a run holds it, a session still recorded as ``running`` can only be one that died unannounced.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "RenderDirBusyError", "render_dir_lock", "mark_dead_sessions"]

LOCK_NAME = ".supergen.lock"


class RenderDirBusyError(OSError):
    """Another run holds the render directory (and ``wait`` was false)."""


@contextlib.contextmanager
def render_dir_lock(
    render_dir: str | Path, *, wait: bool = True, poll: float = 0.5, announce=None
) -> Iterator[None]:
    """Hold the render directory's lock for the duration of the block.

    With ``wait`` a second run waits for the first (``announce(message)`` once, default: to
    stderr), then goes on and finds the work done; without it, ``RenderDirBusyError`` names the
    holder's process id. Without ``fcntl`` (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(render_dir)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK_NAME, "a+") as f:
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                message = f"{path} is being rendered by another run (pid {holder})"
                if not wait:
                    raise RenderDirBusyError(message) from None
                if not told:
                    say = announce or (lambda m: print(m, file=sys.stderr, flush=True))
                    say(f"{message}; waiting for it to finish")
                    told = True
                time.sleep(poll)
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def mark_dead_sessions(store) -> int:
    """Mark sessions still recorded as ``running`` as ``killed`` (call only while holding the
    directory's lock: then no other run is alive). Returns how many were marked."""
    sessions = list(store.attrs.get("sessions", []))
    dead = [s for s in sessions if s.get("status") == "running"]
    for s in dead:
        s["status"] = "killed"
    if dead:
        store.update_attrs(sessions=sessions)
    return len(dead)
