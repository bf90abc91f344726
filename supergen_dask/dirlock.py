"""One run per render directory: an advisory lock held for the whole run.

Two runs on one directory would both do all the work and race on its records. On a local (or
shared POSIX) filesystem the lock is an ``flock`` on ``<render dir>/.supergen.lock``, released by
the operating system when its process ends however it ends (``kill -9`` included), so a stale lock
cannot outlive a dead run; and while a run holds it, a session still recorded as ``running`` can
only be one that died unannounced.

On object storage (``s3://...``) there is no ``flock``. The lock is then the object
``<render dir>/.supergen.lock``, created with a conditional write that fails if it exists (S3's
``If-None-Match: *``), holding its owner (host, process id) and a lease that a thread of the
owner renews. Nothing releases it when its process is killed, so a lock is taken over when it is
stale: its owner is a process of this host that no longer exists (at once), or its lease ran out
(``LEASE_SECONDS`` after its owner stopped renewing it, on any host). The create is atomic on S3;
where a filesystem's fsspec driver has no conditional write, fsspec checks and then writes, and
the lock is read back to catch a run that wrote at the same moment; a driver that cannot create
exclusively at all gets no lock, with a warning. Two runs that find one stale lock at the same
moment may both take it over (there is no conditional delete to prevent it); the lease's renewal
notices and warns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage import Location

__all__ = ["LOCK_NAME", "LEASE_SECONDS", "RenderDirBusyError", "render_dir_lock", "mark_dead_sessions"]

LOCK_NAME = ".supergen.lock"
LEASE_SECONDS = 60.0  # an object-storage lock whose owner stopped renewing it is stale after this

log = logging.getLogger(__name__)


class RenderDirBusyError(OSError):
    """Another run holds the render directory (and ``wait`` was false)."""


@contextlib.contextmanager
def render_dir_lock(
    render_dir: str | Path | Location, *, wait: bool = True, poll: float = 0.5, announce=None
) -> Iterator[None]:
    """Hold the render directory's lock for the duration of the block.

    With ``wait`` a second run waits for the first (``announce(message)`` once, default: to
    stderr), then goes on and finds the work done; without it, ``RenderDirBusyError`` names the
    holder's process id. Without ``fcntl`` (Windows) nothing is locked. ``render_dir`` may be an
    fsspec URL or a ``storage.Location``: on a remote filesystem the lock is a leased object
    (see the module's notes).
    """
    from supergen_dask.config import location

    loc = location(render_dir)
    if not loc.is_local:
        with _object_lock(loc, wait=wait, poll=poll, announce=announce):
            yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = loc.local_path
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(holder: dict, now: float) -> bool:
    """Whether a lock object's owner is gone: a dead process of this host, or an expired lease."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not _alive(holder["pid"]):
            return True
    return float(holder.get("expires", 0)) < now


def _read_holder(lock: Location) -> dict | None:
    try:
        return json.loads(lock.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:  # unreadable: a lock nobody can renew; treat as stale
        return {}


@contextlib.contextmanager
def _object_lock(
    render_dir: Location, *, wait: bool, poll: float, announce, lease: float | None = None
) -> Iterator[None]:
    lease = LEASE_SECONDS if lease is None else lease
    lock = render_dir / LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}

    def body() -> bytes:
        return json.dumps({**me, "expires": time.time() + lease}).encode()

    told = False
    while True:
        try:
            lock.create_exclusive(body())
            # read back: where the driver checks existence and then writes (fsspec's default, not
            # atomic), a run that wrote at the same moment finds the other's lock here
            holder = _read_holder(lock)
            if holder and holder.get("token") == me["token"]:
                break
            holder = holder or {}
        except NotImplementedError:
            warnings.warn(
                f"{render_dir}: {render_dir.protocol} cannot make a conditional write, so the render "
                "directory is not locked: do not run two renders of it at once",
                stacklevel=3,
            )
            yield
            return
        except FileExistsError:
            holder = _read_holder(lock)
            if holder is None:  # released meanwhile
                continue
        if _stale(holder, time.time()):
            log.warning("%s: taking over the stale lock of %s", render_dir, holder or "an unreadable lock")
            lock.unlink(missing_ok=True)
            continue
        message = (
            f"{render_dir} is being rendered by another run "
            f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')})"
        )
        if not wait:
            raise RenderDirBusyError(message)
        if not told:
            say = announce or (lambda m: print(m, file=sys.stderr, flush=True))
            say(f"{message}; waiting for it to finish")
            told = True
        time.sleep(poll)

    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease / 3):
            try:
                holder = _read_holder(lock)
                if not holder or holder.get("token") != me["token"]:
                    log.warning("%s: the lock was taken over by another run", render_dir)
                    return
                lock.write_bytes(body())
            except Exception as exc:  # noqa: BLE001 - try again at the next renewal
                log.warning("%s: could not renew the lock: %s", render_dir, exc)

    renewer = threading.Thread(target=renew, name="supergen-lock-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(Exception):
            holder = _read_holder(lock)
            if holder and holder.get("token") == me["token"]:
                lock.unlink(missing_ok=True)


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
