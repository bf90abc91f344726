"""supergen-dask: ultra-high-resolution video from standard-resolution video diffusion models.

A low-resolution sketch, then tiled refinement with shifting tiles, as a Dask task graph over a
tile-addressed Zarr store. The public API:

- ``RenderSpec`` (+ ``ShiftSettings``, ``CacheSettings``, ``OutputSettings``): what to render;
- ``plan_render(spec)`` -> ``RenderPlan``: validated, pure, serialisable;
- ``render(spec, output_dir=None, client=None)`` / ``resume(render_dir)`` -> ``RenderResult``;
- ``start_render(plan, dir, client)`` -> ``RenderJob`` (non-blocking) and ``render_batch(specs, client)``;
- ``submit(specs, client)`` -> ``RenderHandle`` per spec at once (status, progress, video, xarray view,
  stats, errors, decoded previews), ``show_progress(handles)``;
- ``open_render(store_path, stage="refine")`` -> lazy ``xarray.Dataset`` of the latents;
- ``Location(url, storage_options)``: a render directory or store root on any filesystem fsspec
  reaches (``s3://...``), wherever a path is taken;
- ``make_cluster()`` / ``client_for()``: local CPU or dask-cuda clusters advertising a ``GPU`` resource.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from supergen_dask import config as _config  # noqa: F401  (registers the supergen dask.config defaults)

# imported now (it imports nothing heavy): the function ``submit`` must shadow its module's name,
# which importing the module later would otherwise bind on this package
from supergen_dask.submit import RenderHandle, show_progress, submit

# Public names and the module each lives in. They are imported on first use (PEP 562), so a
# command such as ``supergen report`` or ``--help`` does not pay for torch, Zarr, xarray and
# distributed before it needs them.
_LAZY = {
    "Location": "storage",
    "RenderExistsError": "storage",
    "open_render": "storage",
    "client_for": "supergen_dask.cluster",
    "make_cluster": "supergen_dask.cluster",
    "ShiftSchedule": "supergen_dask.geometry",
    "TileGrid": "supergen_dask.geometry",
    "TileKey": "supergen_dask.geometry",
    "RenderError": "supergen_dask.graph",
    "RenderJob": "supergen_dask.graph",
    "RenderResult": "supergen_dask.graph",
    "default_render_dir": "supergen_dask.graph",
    "load_plan": "supergen_dask.graph",
    "render": "supergen_dask.graph",
    "render_batch": "supergen_dask.graph",
    "resume": "supergen_dask.graph",
    "run_render": "supergen_dask.graph",
    "start_render": "supergen_dask.graph",
    "RenderPlan": "supergen_dask.plan",
    "StagePlan": "supergen_dask.plan",
    "plan_render": "supergen_dask.plan",
    "AnchorSettings": "supergen_dask.spec",
    "CacheSettings": "supergen_dask.spec",
    "OutputSettings": "supergen_dask.spec",
    "RenderSpec": "supergen_dask.spec",
    "ShiftSettings": "supergen_dask.spec",
    "SpecError": "supergen_dask.spec",
}

if TYPE_CHECKING:  # what a type checker and an IDE see: the same names, imported eagerly
    from storage import Location, RenderExistsError, open_render
    from supergen_dask.cluster import client_for, make_cluster
    from supergen_dask.geometry import ShiftSchedule, TileGrid, TileKey
    from supergen_dask.graph import (
        RenderError,
        RenderJob,
        RenderResult,
        default_render_dir,
        load_plan,
        render,
        render_batch,
        resume,
        run_render,
        start_render,
    )
    from supergen_dask.plan import RenderPlan, StagePlan, plan_render
    from supergen_dask.spec import (
        AnchorSettings,
        CacheSettings,
        OutputSettings,
        RenderSpec,
        ShiftSettings,
        SpecError,
    )


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    try:  # a submodule not imported yet (``sd.graph.describe``)
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AnchorSettings",
    "CacheSettings",
    "Location",
    "OutputSettings",
    "RenderError",
    "RenderHandle",
    "RenderExistsError",
    "RenderJob",
    "RenderPlan",
    "RenderResult",
    "RenderSpec",
    "ShiftSchedule",
    "ShiftSettings",
    "SpecError",
    "StagePlan",
    "TileGrid",
    "TileKey",
    "client_for",
    "default_render_dir",
    "load_plan",
    "make_cluster",
    "open_render",
    "plan_render",
    "render",
    "render_batch",
    "resume",
    "run_render",
    "show_progress",
    "start_render",
    "submit",
]
