"""Settings under the ``supergen`` namespace of ``dask.config`` (YAML defaults, ``DASK_SUPERGEN__*``
environment variables, ``dask.config.set`` contexts)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.config
import yaml

if TYPE_CHECKING:
    from storage import Location

__all__ = ["get", "location"]

_DEFAULTS = yaml.safe_load((Path(__file__).with_name("supergen.yaml")).read_text())
dask.config.update_defaults(_DEFAULTS)


def get(key: str, default: Any = None) -> Any:
    """``dask.config.get("supergen.<key>")``."""
    return dask.config.get(f"supergen.{key}", default=default)


def location(where: str | os.PathLike | Location, storage_options: dict[str, Any] | None = None) -> Location:
    """A render directory or store root (a path, an fsspec URL or a ``storage.Location``) as a
    ``Location``. A URL given as text is reached with ``storage_options``, else with the
    ``supergen.storage.options`` setting (fsspec's own configuration comes on top of either)."""
    from storage import Location

    if isinstance(where, Location):
        return where
    options = storage_options if storage_options is not None else get("storage.options")
    return Location(where, options or None)
