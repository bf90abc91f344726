"""Storage of renders: the Zarr layout (tile-addressed), xarray views, and video files (PyAV).

Public names: ``RenderLayout``, ``StageLayout``, ``DecodeLayout``, ``DecodeRegion``,
``create_render_store``, ``RenderStore``, ``RenderExistsError``, ``ChunkCorruptError``,
``layout_nbytes``, ``delete_step_chunks``, ``open_render``, ``encode_video``, ``encode_segment``, ``join_segments``,
``segment_ranges``, ``read_video``, ``probe_video``, ``Location`` and ``as_location`` (a local path or
any fsspec URL, with its storage options).
"""

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
