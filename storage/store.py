"""A render's Zarr v3 store: created whole from a layout, then filled chunk by chunk by tasks.

Rules this module keeps (see the project's storage notes):
- every array a render needs is created up front by the driver; tasks never create arrays and
  never write attributes (attribute writes race);
- one writer per chunk: a tile task writes exactly the chunks of its own tile;
- latents of a step are stored rolled by that step's grid offset, so a tile is one chunk; reads
  take any (wrapping) window in canvas coordinates and touch only the chunks under it;
- ``done`` markers are written after the data they vouch for.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from storage.layout import DecodeRegion, RenderLayout, StageLayout

__all__ = ["STAT_FIELDS", "RenderStore", "RenderExistsError", "create_render_store"]

STAT_FIELDS = (
    "started",
    "seconds",
    "read_seconds",
    "forward_seconds",
    "write_seconds",
    "session",
    "worker",
    "computed",
    "gpu",
)

_FORMAT = "supergen-render/1"


class RenderExistsError(FileExistsError):
    """A different render already lives at this path."""


def _compressors(name: str | None):
    if name in (None, "none"):
        return None
    if name == "zstd":
        return zarr.codecs.ZstdCodec(level=1)
    raise ValueError(f"unknown compressor {name!r}; allowed: [None, 'zstd']")


def _pieces(start: int, length: int, size: int) -> list[tuple[int, int]]:
    """Split a wrapping interval of an axis into at most two contiguous (start, length) pieces."""
    start %= size
    first = min(length, size - start)
    out = [(start, first)]
    if first < length:
        out.append((0, length - first))
    return out


def create_render_store(
    url: str,
    layout: RenderLayout,
    attrs: dict[str, Any],
    *,
    compressor: str | None = None,
    storage_options: dict | None = None,
) -> RenderStore:
    """Create the group and every array of a render (fails if anything exists at ``url``)."""
    try:
        root = zarr.open_group(url, mode="w-", storage_options=storage_options, zarr_format=3)
    except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
        raise RenderExistsError(f"a store already exists at {url}") from None
    comp = _compressors(compressor)
    instance = uuid.uuid4().hex

    def arr(group, name, shape, chunks, dtype, dims, fill, compressors="auto", **kw):
        return group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            dimension_names=dims,
            compressors=compressors,
            **kw,
        )

    arr(
        root,
        "prompt_embeds",
        (2, layout.embed_tokens, layout.embed_dim),
        (2, layout.embed_tokens, layout.embed_dim),
        "float32",
        ("branch", "token", "embed"),
        np.nan,
    )
    arr(root, "task_done", (max(1, len(layout.tasks)),), (1,), "uint8", ("task",), 0)

    for st in layout.stages:
        g = root.create_group(st.name)
        F, C, H, W, th, tw, n = (
            st.frames,
            st.channels,
            st.canvas_h,
            st.canvas_w,
            st.tile_h,
            st.tile_w,
            len(st.steps),
        )
        big = dict(compressors=comp, config={"write_empty_chunks": True})
        arr(g, "start", (F, C, H, W), (F, C, th, tw), st.dtype, ("frame", "channel", "y", "x"), np.nan, **big)
        if st.anchor:
            arr(
                g,
                "anchor",
                (F, C, H, W),
                (F, C, th, tw),
                "float32",
                ("frame", "channel", "y", "x"),
                np.nan,
                **big,
            )
        latents = arr(
            g,
            "latents",
            (n, F, C, H, W),
            (1, F, C, th, tw),
            st.dtype,
            ("step", "frame", "channel", "y", "x"),
            np.nan,
            **big,
        )
        latents.attrs["coordinates"] = "timestep"
        for name, slots in st.state_slots:
            arr(
                g,
                f"state_{name}",
                (n, slots, F, C, H, W),
                (1, slots, F, C, th, tw),
                "float32",
                ("step", f"{name}_slot", "frame", "channel", "y", "x"),
                np.nan,
                **big,
            )
        if st.branches:
            # classifier-free guidance split into one task per branch: one chunk per (step, branch)
            arr(
                g,
                "prediction",
                (n, st.branches, F, C, H, W),
                (1, 1, F, C, th, tw),
                "float32",
                ("step", "branch", "frame", "channel", "y", "x"),
                np.nan,
                **big,
            )
        arr(g, "done", (n, st.rows, st.cols), (1, 1, 1), "uint8", ("step", "tile_y", "tile_x"), 0)
        arr(
            g,
            "tile_stats",
            (n, st.rows, st.cols, len(STAT_FIELDS)),
            (1, 1, 1, len(STAT_FIELDS)),
            "float64",
            ("step", "tile_y", "tile_x", "stat"),
            np.nan,
        )
        arr(g, "step", (n,), (n,), "int64", ("step",), 0)[:] = np.asarray(st.steps, dtype=np.int64)
        arr(g, "timestep", (n,), (n,), "float64", ("step",), np.nan)[:] = np.asarray(
            st.timesteps, dtype=np.float64
        )

    if layout.sketch_pixels is not None:
        f, h, w = layout.sketch_pixels
        arr(
            root,
            "sketch_pixels",
            (f, h, w, 3),
            (f, h, w, 3),
            "uint8",
            ("sketch_frame", "sketch_py", "sketch_px", "rgb"),
            0,
        )

    dec = root.create_group("decoded")
    d = layout.decode
    for reg in d.regions:
        _, _, wh, ww = reg.window
        ph, pw = wh * d.scale, ww * d.scale
        arr(
            dec,
            reg.name,
            (d.frames, ph, pw, 3),
            (min(d.frames, d.frames_per_chunk), ph, pw, 3),
            "uint8",
            ("pixel_frame", f"py_{reg.row}_{reg.col}", f"px_{reg.row}_{reg.col}", "rgb"),
            0,
        )

    root.attrs.update(
        {
            "format": _FORMAT,
            "instance": instance,
            "layout": layout.to_dict(),
            **attrs,
        }
    )
    return RenderStore(url, instance=instance, storage_options=storage_options, mode="r+")


_CACHE: dict[tuple[str, str, str, str], RenderStore] = {}
_CACHE_LOCK = threading.Lock()


class RenderStore:
    """Tile-addressed access to one render's Zarr group.

    Open with ``RenderStore.open(url)``; inside tasks use ``RenderStore.cached(url, instance)``,
    which keeps one handle per process (array metadata is immutable after creation).
    """

    def __init__(
        self, url: str, *, instance: str | None = None, storage_options: dict | None = None, mode: str = "r+"
    ):
        self.url = url
        self.mode = mode
        self.storage_options = storage_options
        self.root = zarr.open_group(url, mode=mode, storage_options=storage_options, zarr_format=3)
        attrs = self.root.attrs.asdict()
        if attrs.get("format") != _FORMAT:
            raise ValueError(f"{url} is not a supergen render store")
        if instance is not None and attrs.get("instance") != instance:
            raise ValueError(f"the store at {url} was replaced since this render started")
        self.instance = attrs["instance"]
        self.layout = RenderLayout.from_dict(attrs["layout"])
        self._arrays: dict[str, zarr.Array] = {}

    @classmethod
    def open(cls, url: str, mode: str = "r+", storage_options: dict | None = None) -> RenderStore:
        try:
            return cls(url, mode=mode, storage_options=storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise FileNotFoundError(f"no render store at {url}") from None

    @classmethod
    def cached(
        cls, url: str, instance: str, storage_options: dict | None = None, mode: str = "r+"
    ) -> RenderStore:
        key = (url, instance, json.dumps(storage_options, sort_keys=True), mode)
        with _CACHE_LOCK:
            store = _CACHE.get(key)
            if store is None:
                store = cls(url, instance=instance, storage_options=storage_options, mode=mode)
                _CACHE[key] = store
        return store

    # -- attributes (driver only) ---------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return self.root.attrs.asdict()

    def update_attrs(self, **values: Any) -> None:
        self.root.attrs.update(values)

    # -- arrays ---------------------------------------------------------------------------------
    def array(self, path: str) -> zarr.Array:
        a = self._arrays.get(path)
        if a is None:
            a = self.root[path]
            self._arrays[path] = a
        return a

    def stage(self, name: str) -> StageLayout:
        return self.layout.stage(name)

    # -- tiles ----------------------------------------------------------------------------------
    def write_tile(
        self,
        stage: str,
        name: str,
        step: int | None,
        row: int,
        col: int,
        data: np.ndarray,
        sub: tuple[int, ...] = (),
    ) -> None:
        """Write the chunk of tile (row, col) of ``step``'s grid. ``data`` is ``(..., tile_h, tile_w)``
        without the step axis; ``name`` is ``latents``, ``start``, ``anchor``, ``state_<x>`` or
        ``prediction``; ``sub`` indexes the axes after the step (the branch of a prediction)."""
        st = self.stage(stage)
        a = self.array(f"{stage}/{name}")
        ys, xs = slice(row * st.tile_h, (row + 1) * st.tile_h), slice(col * st.tile_w, (col + 1) * st.tile_w)
        lead = (() if step is None else (st.step_index(step),)) + tuple(sub)
        middle = (slice(None),) * (a.ndim - len(lead) - 2)
        a[lead + middle + (ys, xs)] = np.ascontiguousarray(data)

    def read_region(
        self,
        stage: str,
        name: str,
        step: int | None,
        y0: int,
        x0: int,
        h: int,
        w: int,
        sub: tuple[int, ...] = (),
    ) -> np.ndarray:
        """Read a window of the canvas (wrapping at the edges) from a step's rolled array."""
        st = self.stage(stage)
        a = self.array(f"{stage}/{name}")
        oy, ox = st.offset_of(step)
        lead = (() if step is None else (st.step_index(step),)) + tuple(sub)
        middle = (slice(None),) * (a.ndim - len(lead) - 2)
        rows = []
        for ya, yn in _pieces(y0 - oy, h, st.canvas_h):
            cols = [
                a[lead + middle + (slice(ya, ya + yn), slice(xa, xa + xn))]
                for xa, xn in _pieces(x0 - ox, w, st.canvas_w)
            ]
            rows.append(cols[0] if len(cols) == 1 else np.concatenate(cols, axis=-1))
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=-2)

    def read_canvas(self, stage: str, name: str, step: int | None) -> np.ndarray:
        """The whole (padded) canvas of a step, un-rolled."""
        st = self.stage(stage)
        return self.read_region(stage, name, step, 0, 0, st.canvas_h, st.canvas_w)

    # -- markers and stats ----------------------------------------------------------------------
    def is_done(self, stage: str, step: int, row: int, col: int) -> bool:
        st = self.stage(stage)
        return bool(self.array(f"{stage}/done")[st.step_index(step), row, col])

    def mark_done(self, stage: str, step: int, row: int, col: int, stats: dict[str, float]) -> None:
        st = self.stage(stage)
        i = st.step_index(step)
        unknown = set(stats) - set(STAT_FIELDS)
        if unknown:
            raise KeyError(f"unknown stat fields {sorted(unknown)}; allowed: {STAT_FIELDS}")
        row_values = np.array([stats.get(f, np.nan) for f in STAT_FIELDS], dtype=np.float64)
        table = self.array(f"{stage}/tile_stats")
        table[i, row, col, :] = row_values[: table.shape[-1]]
        self.array(f"{stage}/done")[i, row, col] = 1

    def done_mask(self, stage: str) -> np.ndarray:
        """``(steps, rows, cols)`` booleans: which tiles are finished."""
        return self.array(f"{stage}/done")[...].astype(bool)

    def tile_stats(self, stage: str) -> dict[str, np.ndarray]:
        a = self.array(f"{stage}/tile_stats")[...]
        # stores made before a field existed have fewer columns
        return {f: a[..., i] for i, f in enumerate(STAT_FIELDS[: a.shape[-1]])}

    def task_index(self, task: str) -> int:
        try:
            return self.layout.tasks.index(task)
        except ValueError:
            raise KeyError(f"no task {task!r} in this render; tasks: {list(self.layout.tasks)}") from None

    def task_is_done(self, task: str) -> bool:
        return bool(self.array("task_done")[self.task_index(task)])

    def mark_task_done(self, task: str) -> None:
        self.array("task_done")[self.task_index(task)] = 1

    def tasks_done(self) -> dict[str, bool]:
        flags = self.array("task_done")[...]
        return {t: bool(flags[i]) for i, t in enumerate(self.layout.tasks)}

    # -- disk -----------------------------------------------------------------------------------
    def is_finished(self) -> bool:
        """Every tile of every stage and every other task done."""
        tiles = all(self.done_mask(st.name).all() for st in self.layout.stages)
        return tiles and all(self.tasks_done().values())

    def prune_intermediate(self) -> int:
        """Free the space that only resuming and step-by-step inspection need, once finished.

        Deletes the chunks of every stage's latents before its last step and of all scheduler
        state (most of a render's bytes: each step keeps a full canvas of latents and history).
        Array metadata stays, so pruned steps read as NaN in ``open_render``; the final latents,
        the start and anchor latents, the decoded frames, the video and every record remain.
        Returns the number of chunk groups (one step of latents, or one state array) deleted.

        Raises
        ------
        RuntimeError
            If the render is not finished (a resume would need what this deletes).
        """
        if not self.is_finished():
            raise RuntimeError(f"{self.url}: only a finished render can be pruned")
        prefixes = []
        for st in self.layout.stages:
            prefixes += [f"{st.name}/latents/c/{i}" for i in range(len(st.steps) - 1)]
            prefixes += [f"{st.name}/state_{name}/c" for name, _ in st.state_slots]
            if st.branches:
                prefixes.append(f"{st.name}/prediction/c")
        store = self.root.store_path.store
        base = self.root.store_path.path
        for prefix in prefixes:
            sync(store.delete_dir(f"{base}/{prefix}" if base else prefix))
        self.update_attrs(pruned=True)
        return len(prefixes)

    # -- prompt embeddings ----------------------------------------------------------------------
    def write_prompt_embeds(self, negative: np.ndarray, positive: np.ndarray) -> None:
        self.array("prompt_embeds")[...] = np.stack([negative, positive]).astype(np.float32)

    def read_prompt_embeds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(negative, positive)``, each ``(tokens, dim)``."""
        a = self.array("prompt_embeds")[...]
        return a[0], a[1]

    # -- pixels ---------------------------------------------------------------------------------
    def write_sketch_pixels(self, video: np.ndarray) -> None:
        self.array("sketch_pixels")[...] = video

    def read_sketch_pixels(self) -> np.ndarray:
        return self.array("sketch_pixels")[...]

    def write_region_pixels(self, region: DecodeRegion, video: np.ndarray) -> None:
        self.array(f"decoded/{region.name}")[...] = video

    def decoded_frames(self, frames: Sequence[int] | slice | None = None) -> np.ndarray:
        """Blend the decoded regions into whole frames ``(F, H, W, 3)`` uint8 (valid area only)."""
        d = self.layout.decode
        index = np.arange(d.frames)[frames if frames is not None else slice(None)]
        H, W = d.valid_h * d.scale, d.valid_w * d.scale
        acc = np.zeros((len(index), H, W, 3), dtype=np.float32)
        wsum = np.zeros((H, W), dtype=np.float32)
        for reg in d.regions:
            wy, wx = _blend_weights(reg, d)
            y0, x0, wh, ww = (v * d.scale for v in reg.window)
            weight = wy[:, None] * wx[None, :]
            pix = self.array(f"decoded/{reg.name}").get_orthogonal_selection(
                (index, slice(None), slice(None), slice(None))
            )
            acc[:, y0 : y0 + wh, x0 : x0 + ww] += pix.astype(np.float32) * weight[None, :, :, None]
            wsum[y0 : y0 + wh, x0 : x0 + ww] += weight
        if np.any(wsum <= 0):
            raise RuntimeError("decoded regions do not cover the frame")
        return np.clip(np.rint(acc / wsum[None, :, :, None]), 0, 255).astype(np.uint8)

    def iter_decoded(self, chunk: int | None = None) -> Iterator[np.ndarray]:
        """Yield decoded frames one at a time, reading ``chunk`` frames per pass (default: the
        stored frame chunk, so every chunk is read once)."""
        total = self.layout.decode.frames
        chunk = chunk or self.layout.decode.frames_per_chunk
        for s in range(0, total, chunk):
            yield from self.decoded_frames(slice(s, min(total, s + chunk)))


def _blend_weights(reg: DecodeRegion, d) -> tuple[np.ndarray, np.ndarray]:
    """Linear cross-fade weights over the overlap of neighbouring windows (pixel units).

    Inside the region's core the weight is 1; it falls to 0 at the window edge that faces a
    neighbour, centred on the core boundary, so the weights of two neighbours sum to 1 there.
    """

    def axis(core0, core_n, win0, win_n, valid):
        s = d.scale
        pos = np.arange(win0 * s, (win0 + win_n) * s, dtype=np.float32) + 0.5
        w = np.ones_like(pos)
        lo_margin = (core0 - win0) * s
        hi_margin = (win0 + win_n - core0 - core_n) * s
        if core0 > 0 and lo_margin > 0:  # a neighbour above/left: ramp over [core0 - m, core0 + m)
            edge = core0 * s
            w = np.minimum(w, np.clip((pos - (edge - lo_margin)) / (2 * lo_margin), 0, 1))
        if core0 + core_n < valid and hi_margin > 0:
            edge = (core0 + core_n) * s
            w = np.minimum(w, np.clip(((edge + hi_margin) - pos) / (2 * hi_margin), 0, 1))
        return w

    cy, cx, ch, cw = reg.core
    wy0, wx0, wh, ww = reg.window
    return axis(cy, ch, wy0, wh, d.valid_h), axis(cx, cw, wx0, ww, d.valid_w)
