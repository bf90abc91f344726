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

from storage import Location, RenderExistsError, open_render
from supergen_dask import config as _config  # noqa: F401  (registers the supergen dask.config defaults)
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
from supergen_dask.submit import RenderHandle, show_progress, submit

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
