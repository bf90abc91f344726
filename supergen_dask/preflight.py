"""Checks of where a render will be written, made before anything is written there."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage import Location

__all__ = ["OutputDirError", "check_output_dir"]


class OutputDirError(ValueError):
    """The render directory cannot be created or written; the message names the path."""


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): os.access decides
        return False


def _check_remote(loc: Location) -> None:
    """The checks that a remote filesystem allows without writing: the location is reachable (its
    bucket exists, the credentials work) and is not a file."""
    try:
        if loc.is_file():
            raise OutputDirError(f"output directory {loc}: exists and is not a directory")
        existing = loc.nearest_existing()
    except OutputDirError:
        raise
    except Exception as exc:  # noqa: BLE001 - missing credentials, refused access, no such host
        raise OutputDirError(
            f"output directory {loc}: cannot reach it ({type(exc).__name__}: {exc})"
        ) from None
    if existing is None:
        raise OutputDirError(f"output directory {loc}: its bucket (or root) does not exist")
    if existing != loc and existing.is_file():
        raise OutputDirError(f"output directory {loc}: {existing} is a file, not a directory")


def check_output_dir(render_dir: str | Path | Location) -> None:
    """Raise ``OutputDirError`` if ``render_dir`` is not, and cannot become, a writable directory.

    Creates nothing: the nearest existing ancestor must be a directory that this process may
    write, on a filesystem mounted read-write. ``render_dir`` may be an fsspec URL or a
    ``storage.Location``: then it must be reachable and not a file (object stores say nothing
    of write permission before a write).
    """
    from supergen_dask.config import location

    loc = location(render_dir)
    if not loc.is_local:
        _check_remote(loc)
        return
    target = loc.local_path.absolute()
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        if existing == target:
            raise OutputDirError(f"output directory {render_dir}: exists and is not a directory")
        raise OutputDirError(f"output directory {render_dir}: {existing} is a file, not a directory")
    if _read_only(existing):
        raise OutputDirError(f"output directory {render_dir}: {existing} is on a read-only filesystem")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputDirError(f"output directory {render_dir}: {existing} is not writable")
    store = target / "render.zarr"
    if store.exists() and not os.access(store, os.W_OK | os.X_OK):
        raise OutputDirError(f"output directory {render_dir}: {store} is not writable")
