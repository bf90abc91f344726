"""Settings under the ``supergen`` namespace of ``dask.config`` (YAML defaults, ``DASK_SUPERGEN__*``
environment variables, ``dask.config.set`` contexts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import yaml

__all__ = ["get"]

_DEFAULTS = yaml.safe_load((Path(__file__).with_name("supergen.yaml")).read_text())
dask.config.update_defaults(_DEFAULTS)


def get(key: str, default: Any = None) -> Any:
    """``dask.config.get("supergen.<key>")``."""
    return dask.config.get(f"supergen.{key}", default=default)
