"""Storage of renders: the Zarr layout (tile-addressed), xarray views, and video files (PyAV).

Public names: ``RenderLayout``, ``StageLayout``, ``DecodeLayout``, ``DecodeRegion``,
``create_render_store``, ``RenderStore``, ``RenderExistsError``, ``ChunkCorruptError``,
``layout_nbytes``, ``delete_step_chunks``, ``open_render``, ``encode_video``, ``encode_segment``, ``join_segments``,
``segment_ranges``, ``read_video``, ``probe_video``, ``Location`` and ``as_location`` (a local path or
any fsspec URL, with its storage options).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Public names and the module each lives in, imported on first use (PEP 562): reading a store
# does not import xarray and dask.array, which only ``open_render`` needs.
_LAZY = {
    "ChunkCorruptError": "storage.checksums",
    "DecodeLayout": "storage.layout",
    "DecodeRegion": "storage.layout",
    "RenderLayout": "storage.layout",
    "StageLayout": "storage.layout",
    "Location": "storage.location",
    "as_location": "storage.location",
    "delete_step_chunks": "storage.retention",
    "STAT_FIELDS": "storage.store",
    "RenderExistsError": "storage.store",
    "RenderStore": "storage.store",
    "create_render_store": "storage.store",
    "layout_nbytes": "storage.store",
    "VideoInfo": "storage.video",
    "encode_segment": "storage.video",
    "encode_video": "storage.video",
    "join_segments": "storage.video",
    "probe_video": "storage.video",
    "read_video": "storage.video",
    "segment_ranges": "storage.video",
    "open_render": "storage.views",
}

if TYPE_CHECKING:  # what a type checker and an IDE see: the same names, imported eagerly
    from storage.checksums import ChunkCorruptError
    from storage.layout import DecodeLayout, DecodeRegion, RenderLayout, StageLayout
    from storage.location import Location, as_location
    from storage.retention import delete_step_chunks
    from storage.store import STAT_FIELDS, RenderExistsError, RenderStore, create_render_store, layout_nbytes
    from storage.video import (
        VideoInfo,
        encode_segment,
        encode_video,
        join_segments,
        probe_video,
        read_video,
        segment_ranges,
    )
    from storage.views import open_render


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "STAT_FIELDS",
    "ChunkCorruptError",
    "DecodeLayout",
    "DecodeRegion",
    "Location",
    "RenderExistsError",
    "RenderLayout",
    "RenderStore",
    "StageLayout",
    "VideoInfo",
    "as_location",
    "create_render_store",
    "delete_step_chunks",
    "encode_segment",
    "layout_nbytes",
    "encode_video",
    "join_segments",
    "open_render",
    "probe_video",
    "read_video",
    "segment_ranges",
]
