"""xarray views of a render: latents in canvas coordinates, lazily un-rolled from tile storage."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import xarray as xr

from storage.location import Location
from storage.store import STAT_FIELDS, RenderStore

__all__ = ["open_render"]


def _read_block(template, url: str, instance: str, storage_options, stage: str, name: str, block_info=None):
    store = RenderStore.cached(url, instance, storage_options, mode="r")
    st = store.stage(stage)
    loc = block_info[None]["array-location"]
    (y0, y1), (x0, x1) = loc[-2], loc[-1]
    if name == "start":
        return store.read_region(stage, name, None, y0, x0, y1 - y0, x1 - x0)
    out = []
    for i in range(*loc[0]):
        step = st.steps[i]
        # a step that retention frees reads as NaN once freed, never as damage
        verify = None if name in st.freed(step) else "all"
        out.append(store.read_region(stage, name, step, y0, x0, y1 - y0, x1 - x0, verify=verify))
    return np.stack(out)


def _canvas_array(store: RenderStore, stage: str, name: str) -> da.Array:
    """A lazy canvas-coordinate view of a rolled, tile-chunked array: each output chunk (one tile of
    the unshifted grid) reads the at most four stored chunks under it."""
    st = store.stage(stage)
    a = store.array(f"{stage}/{name}")
    chunks = (st.frames, st.channels, st.tile_h, st.tile_w)
    if name != "start":
        chunks = (1,) + chunks
    template = da.empty(a.shape, chunks=chunks, dtype=a.dtype)
    return da.map_blocks(
        _read_block,
        template,
        store.url,
        store.instance,
        store.storage_options,
        stage,
        name,
        dtype=a.dtype,
        meta=np.empty((0,) * a.ndim, dtype=a.dtype),
    )


def open_render(
    path: str | Location, stage: str = "refine", crop: bool = True, storage_options: dict | None = None
) -> xr.Dataset:
    """Open one stage of a render as a lazy ``xarray.Dataset`` in canvas coordinates.

    Parameters
    ----------
    path
        The render's Zarr store: a directory, an fsspec URL (``s3://bucket/renders/x/render.zarr``)
        or a ``storage.Location`` (a URL with its storage options).
    stage
        ``"refine"`` (the tiled high-resolution stage) or ``"sketch"`` (the native-size pass).
    crop
        Drop the padding that rounds the canvas up to whole tiles (default). With ``crop=False``
        the full padded canvas is returned, as the tasks wrote it.
    storage_options
        fsspec options for a URL (credentials, ``endpoint_url``); fsspec's own configuration
        (``AWS_*`` variables, ...) applies without them.

    Returns
    -------
    xarray.Dataset
        ``latents(step, frame, channel, y, x)``: the latents written by each denoising step
        (``step`` labels are schedule indices, ``timestep`` the timestep that step denoised from);
        ``start(frame, channel, y, x)``: the stage's input; ``done(step, tile_y, tile_x)`` and the
        per-tile stats (``tile_seconds``, ...); ``tile_y0(step, tile_y)``/``tile_x0(step, tile_x)``
        give each step's tile origins; ``kept(step)`` says which steps' latents the render's
        retention keeps (the others are deleted once nothing needs them; attribute
        ``steps_kept`` lists the kept ones: ``ds.sel(step=ds.steps_kept)``). ``y``/``x`` are latent
        cells. Nothing is read until values are asked for; a step that is not finished, or freed,
        reads as NaN.
    """
    store = RenderStore.open(path, mode="r", storage_options=storage_options)
    st = store.stage(stage)
    H, W = st.canvas_h, st.canvas_w
    h, w = (st.valid_h, st.valid_w) if crop else (H, W)
    dims = ("frame", "channel", "y", "x")

    latents = _canvas_array(store, stage, "latents")[..., :h, :w]
    start = _canvas_array(store, stage, "start")[..., :h, :w]
    data_vars = {
        "latents": (("step",) + dims, latents),
        "start": (dims, start),
        "done": (("step", "tile_y", "tile_x"), da.from_zarr(store.array(f"{stage}/done")).astype(bool)),
    }
    kept = np.array(["latents" not in st.freed(s) for s in st.steps])
    stats = da.from_zarr(store.array(f"{stage}/tile_stats"))
    for i, name in enumerate(STAT_FIELDS[: stats.shape[-1]]):  # older stores have fewer fields
        data_vars[f"tile_{name}"] = (("step", "tile_y", "tile_x"), stats[..., i])
    offsets = np.asarray(st.offsets, dtype=np.int64)
    coords = {
        "step": np.asarray(st.steps, dtype=np.int64),
        "timestep": ("step", np.asarray(st.timesteps, dtype=np.float64)),
        "kept": ("step", kept),
        "frame": np.arange(st.frames),
        "channel": np.arange(st.channels),
        "y": np.arange(h),
        "x": np.arange(w),
        "tile_y": np.arange(st.rows),
        "tile_x": np.arange(st.cols),
        "tile_y0": (("step", "tile_y"), (np.arange(st.rows)[None, :] * st.tile_h + offsets[:, :1]) % H),
        "tile_x0": (("step", "tile_x"), (np.arange(st.cols)[None, :] * st.tile_w + offsets[:, 1:]) % W),
    }
    attrs = {
        "stage": stage,
        "canvas_height": H,
        "canvas_width": W,
        "valid_height": st.valid_h,
        "valid_width": st.valid_w,
        "tile_height": st.tile_h,
        "tile_width": st.tile_w,
        "store": str(path),
        "steps_kept": [int(s) for s, k in zip(st.steps, kept, strict=True) if k],
    }
    root_attrs = store.attrs
    for key in ("spec", "plan", "versions"):
        if key in root_attrs:
            attrs[key] = json.dumps(root_attrs[key], sort_keys=True)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
