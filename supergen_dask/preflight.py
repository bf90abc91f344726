"""Checks of where a render will be written, made before anything is written there."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["OutputDirError", "check_output_dir"]


class OutputDirError(ValueError):
    """The render directory cannot be created or written; the message names the path."""


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): os.access decides
        return False


def check_output_dir(render_dir: str | Path) -> None:
    """Raise ``OutputDirError`` if ``render_dir`` is not, and cannot become, a writable directory.

    Creates nothing: the nearest existing ancestor must be a directory that this process may
    write, on a filesystem mounted read-write.
    """
    target = Path(render_dir).absolute()
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
