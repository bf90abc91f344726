"""A render's Zarr v3 store: created whole from a layout, then filled chunk by chunk by tasks.

Rules this module keeps (see the project's storage notes):
- every array a render needs is created up front by the driver; tasks never create arrays and
  never write attributes (attribute writes race);
- one writer per chunk: a tile task writes exactly the chunks of its own tile;
- latents of a step are stored rolled by that step's grid offset, so a tile is one chunk; reads
  take any (wrapping) window in canvas coordinates and touch only the chunks under it;
- ``done`` markers are written after the data they vouch for;
- every latent, state, start, image condition, pixel and prompt chunk has a CRC-32 recorded by
  its writer (before the done marker) and checked by its readers (``storage.checksums``), so a
  chunk changed or lost on disk raises ``ChunkCorruptError`` instead of being used.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import dask.config
import numpy as np
import zarr
from zarr.core.sync import sync

from storage.blend import blend_regions_uint8
from storage.checksums import NOT_RECORDED, ChunkCorruptError, crc32
from storage.layout import DecodeRegion, RenderLayout, StageLayout
from storage.location import Location, _local_path

__all__ = [
    "STAT_FIELDS",
    "RenderStore",
    "RenderExistsError",
    "create_render_store",
    "checked_arrays",
    "start_arrays",
    "layout_nbytes",
]

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
    # the residual cache's decision (supergen_dask.cache): held gain, predicted change,
    # accumulated change, threshold, run of skips; and mean |guided prediction| (region ranking)
    "cache_k",
    "cache_change",
    "cache_acc",
    "cache_tau",
    "cache_skips",
    "pred_mean",
    # the device turn of a tile task (supergen_dask.worker_models.device_turn): seconds it waited
    # for it after its reads, the wall-clock time it began, and its length (queueing the tile's
    # work on the card; forward_seconds runs on until the results reached the host); stores made
    # before these fields have no columns for them
    "wait_seconds",
    "turn_started",
    "turn_seconds",
)

_FORMAT = "supergen-render/1"

# fields of a residual-cache chunk: the step's input, the last computed step's input and prediction
CACHE_CANVASES = 3


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


def checked_arrays(st: StageLayout) -> tuple[str, ...]:
    """The per-step arrays of a stage whose chunks carry a checksum, in ``checksums`` order."""
    cache = ("cache",) if st.cache else ()
    return ("latents",) + tuple(f"state_{name}" for name, _ in st.state_slots) + cache


def start_arrays(st: StageLayout) -> tuple[str, ...]:
    """The step-less arrays of a stage (its input), in ``start_checksums`` order."""
    return ("start", "anchor") if st.anchor else ("start",)


def _isize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def layout_nbytes(layout: RenderLayout) -> dict[str, int]:
    """Bytes the chunks of a render's arrays take once it is finished (every chunk written, those
    that retention frees deleted), uncompressed, by kind: ``latents`` (start, anchor, per-step
    latents), ``state`` (scheduler history), ``pixels`` (decoded regions and sketch pixels) and
    ``records`` (markers, stats, checksums, embeddings)."""
    out = {"latents": 0, "state": 0, "pixels": 0, "records": 0}
    for st in layout.stages:
        canvas = st.frames * st.channels * st.canvas_h * st.canvas_w
        n, tiles = len(st.steps), st.rows * st.cols
        # what stays once the render is done (retention: ``StageLayout.freed``)
        kept = n if st.kept is None else len(set(st.kept) & set(st.steps))
        history = n if st.keep_history else 0
        out["latents"] += canvas * (_isize(st.dtype) * (kept + 1) + (4 if st.anchor else 0))
        out["state"] += sum(slots for _, slots in st.state_slots) * history * canvas * _isize(st.dtype)
        out["state"] += st.branches * history * canvas * 4  # guidance branch outputs (float32)
        if st.cache:  # three canvases per step (freed with the history), and the threshold rankings
            out["state"] += CACHE_CANVASES * history * canvas * _isize(st.dtype)
            out["records"] += max(1, st.cache_updates) * tiles * 8
        out["latents"] += st.frames * st.image_channels * st.canvas_h * st.canvas_w * 4
        out["records"] += st.image_tokens * st.image_embed_dim * 4
        out["records"] += 8 * (tiles if st.image_channels else 0) + 8 * bool(st.image_tokens)  # checksums
        k = len(checked_arrays(st))
        out["records"] += n * tiles * (1 + 8 * len(STAT_FIELDS) + 8 * k) + tiles * 8 * len(start_arrays(st))
        out["records"] += n * 16
    d = layout.decode
    chunks = -(-d.frames // d.frames_per_chunk)
    for reg in d.regions:
        _, _, wh, ww = reg.window
        out["pixels"] += d.frames * wh * ww * d.scale * d.scale * 3
    out["records"] += len(d.regions) * chunks * 8
    if layout.sketch_pixels is not None:
        f, h, w = layout.sketch_pixels
        out["pixels"] += f * h * w * 3
    out["records"] += 2 * layout.embed_tokens * layout.embed_dim * 4 + 8 + max(1, len(layout.tasks))
    return out


def _address(url: str | Location, storage_options: dict | None) -> tuple[str, dict | None]:
    """A store's URL and storage options, from a URL (and options) or a ``Location``."""
    if isinstance(url, Location):
        return url.url, storage_options if storage_options is not None else url.storage_options
    return url, storage_options


def create_render_store(
    url: str | Location,
    layout: RenderLayout,
    attrs: dict[str, Any],
    *,
    compressor: str | None = None,
    storage_options: dict | None = None,
) -> RenderStore:
    """Create the group and every array of a render (fails if anything exists at ``url``).

    On a local filesystem the store is built under a temporary name beside ``url`` and renamed
    into place when complete, so a kill during creation never leaves a half-made store at
    ``url`` (only a ``<url>.partial-*`` directory that nothing reads). On another filesystem
    (object storage) there is no rename: the store is built in memory, its objects uploaded at
    once (concurrently: one request each, instead of several sequential ones per array), and the
    root's metadata with its attributes last, so a store whose creation was cut short has no root
    and is not taken for a render.
    """
    url, storage_options = _address(url, storage_options)
    local = _local_path(url)
    remote = None if local is not None else Location(url, storage_options)
    if (local or remote).exists():
        raise RenderExistsError(f"a store already exists at {url}")
    instance = uuid.uuid4().hex
    if remote is not None:
        built: dict = {}
        build = zarr.storage.MemoryStore(built)
    else:
        build = str(local.with_name(f"{local.name}.partial-{instance[:8]}"))
    try:
        root = zarr.open_group(build, mode="w-", zarr_format=3)
    except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
        raise RenderExistsError(f"a store already exists at {url}") from None
    comp = _compressors(compressor)

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
    arr(root, "prompt_checksum", (1,), (1,), "int64", ("one",), NOT_RECORDED)

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
        if st.image_channels:  # image-to-video condition on the canvas, and its global embeddings
            shape = (F, st.image_channels, H, W)
            dims = ("frame", "image_channel", "y", "x")
            arr(g, "image", shape, (F, st.image_channels, th, tw), "float32", dims, np.nan, **big)
            sums = ("tile_y", "tile_x")
            arr(g, "image_checksums", (st.rows, st.cols), (st.rows, st.cols), "int64", sums, NOT_RECORDED)
        if st.image_tokens:
            shape = (st.image_tokens, st.image_embed_dim)
            arr(g, "image_embeds", shape, shape, "float32", ("image_token", "image_embed"), np.nan)
            arr(g, "image_embeds_checksum", (1,), (1,), "int64", ("one",), NOT_RECORDED)
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
                st.dtype,
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
        if st.cache:
            # residual cache, rolled like the latents: one chunk per (step, tile) holding the step's
            # input and the input and guided prediction of the region's last computed step
            arr(
                g,
                "cache",
                (n, CACHE_CANVASES, F, C, H, W),
                (1, CACHE_CANVASES, F, C, th, tw),
                st.dtype,
                ("step", "cache_field", "frame", "channel", "y", "x"),
                np.nan,
                **big,
            )
            arr(
                g,
                "cache_scale",
                (max(1, st.cache_updates), st.rows, st.cols),
                (1, st.rows, st.cols),
                "float64",
                ("cache_update", "tile_y", "tile_x"),
                np.nan,
            )
        arr(g, "done", (n, st.rows, st.cols), (1, 1, 1), "uint8", ("step", "tile_y", "tile_x"), 0)
        k = len(checked_arrays(st))
        sums = arr(
            g,
            "checksums",
            (n, st.rows, st.cols, k),
            (1, 1, 1, k),
            "int64",
            ("step", "tile_y", "tile_x", "checked_array"),
            NOT_RECORDED,
        )
        sums.attrs["arrays"] = list(checked_arrays(st))
        k0 = len(start_arrays(st))
        sums = arr(
            g,
            "start_checksums",
            (st.rows, st.cols, k0),
            (1, 1, 1),
            "int64",
            ("tile_y", "tile_x", "start_array"),
            NOT_RECORDED,
        )
        sums.attrs["arrays"] = list(start_arrays(st))
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
    n_chunks = -(-d.frames // d.frames_per_chunk)
    arr(
        dec,
        "checksums",
        (max(1, len(d.regions)), n_chunks),
        (1, n_chunks),
        "int64",
        ("region", "frame_chunk"),
        NOT_RECORDED,
    )
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
    if remote is not None:
        objects = {f"{remote.path}/{key}": buf.to_bytes() for key, buf in built.items()}
        top = objects.pop(f"{remote.path}/zarr.json")
        remote.fs.pipe(objects)
        remote.fs.pipe_file(f"{remote.path}/zarr.json", top)  # last: the store is complete
    else:
        try:
            os.rename(build, local)  # atomic: the store appears whole or not at all
        except OSError:
            shutil.rmtree(build, ignore_errors=True)
            if local.exists():
                raise RenderExistsError(f"a store already exists at {url}") from None
            raise
    return RenderStore(url, instance=instance, storage_options=storage_options, mode="r+")


_CACHE: dict[tuple[str, str, str, str], RenderStore] = {}
_CACHE_LOCK = threading.Lock()


class RenderStore:
    """Tile-addressed access to one render's Zarr group.

    Open with ``RenderStore.open(url)``; inside tasks use ``RenderStore.cached(url, instance)``,
    which keeps one handle per process (array metadata is immutable after creation).
    """

    def __init__(
        self,
        url: str | Location,
        *,
        instance: str | None = None,
        storage_options: dict | None = None,
        mode: str = "r+",
    ):
        url, storage_options = _address(url, storage_options)
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
        # checksums of tiles written by this process, recorded by mark_done (task -> array -> crc)
        self._pending: dict[tuple[str, int, int, int], dict[str, int]] = {}
        self._recorded: dict[tuple[str, str, int, int], np.ndarray] = {}
        self._lock = threading.Lock()
        self._has_checksums = "prompt_checksum" in self.root  # stores made before checksums: none
        self._image_sums: dict[str, bool] = {}
        # Readers check every chunk they read whole (about 1 s per 2 GB hashed on one core);
        # ``supergen.storage.verify-reads: false`` leaves it to resume and ``supergen verify``.
        self.verify_reads = bool(dask.config.get("supergen.storage.verify-reads", True))

    @property
    def location(self) -> Location:
        """Where the store is (URL and storage options), as tasks receive it."""
        return Location(self.url, self.storage_options)

    @classmethod
    def open(cls, url: str | Location, mode: str = "r+", storage_options: dict | None = None) -> RenderStore:
        try:
            return cls(url, mode=mode, storage_options=storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise FileNotFoundError(f"no render store at {url}") from None

    @classmethod
    def cached(
        cls, url: str | Location, instance: str, storage_options: dict | None = None, mode: str = "r+"
    ) -> RenderStore:
        url, storage_options = _address(url, storage_options)
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
        data = np.ascontiguousarray(data, dtype=a.dtype)
        a[lead + middle + (ys, xs)] = data
        if not self._has_checksums or sub:  # guidance branch outputs are intermediate: unchecked
            return
        crc = crc32(data)
        if step is None and name not in start_arrays(st):  # the image condition: its task's marker
            if self._has_image_checksums(stage):  # vouches for it, as for a stage input
                self.array(f"{stage}/image_checksums")[row, col] = crc
            return
        if step is None:  # a stage input: its task marker vouches for it, record now
            self.array(f"{stage}/start_checksums")[row, col, start_arrays(st).index(name)] = crc
        else:  # recorded with the tile's done marker (one small write per tile)
            with self._lock:
                self._pending.setdefault((stage, step, row, col), {})[name] = crc

    # -- checksums ------------------------------------------------------------------------------
    def recorded_checksums(
        self, stage: str, name: str, step: int | None, rows: Sequence[int], cols: Sequence[int]
    ) -> dict[tuple[int, int], int]:
        """Recorded CRC-32 of the chunks of tiles ``rows x cols`` (``-1``: nothing recorded)."""
        st = self.stage(stage)
        if step is None and name not in start_arrays(st):  # the image condition (read whole: small)
            if not self._has_image_checksums(stage):  # stores made before it had checksums
                return {(r, c): NOT_RECORDED for r in rows for c in cols}
            table = self.array(f"{stage}/image_checksums")[...]
            return {(r, c): int(table[r, c]) for r in rows for c in cols}
        if not self._has_checksums:
            return {(r, c): NOT_RECORDED for r in rows for c in cols}
        if step is None:
            path, j, lead = f"{stage}/start_checksums", start_arrays(st).index(name), ()
        else:
            path, j, lead = f"{stage}/checksums", checked_arrays(st).index(name), (st.step_index(step),)
        key0 = (path, lead[0] if lead else -1)
        out: dict[tuple[int, int], int] = {}
        missing = []
        for r in rows:
            for c in cols:
                hit = self._recorded.get((*key0, r, c))
                if hit is None:
                    missing.append((r, c))
                else:
                    out[(r, c)] = int(hit[j])
        if missing:
            rs = sorted({r for r, _ in missing})
            cs = sorted({c for _, c in missing})
            table = self.array(path).get_orthogonal_selection(lead + (rs, cs, slice(None)))
            for ri, r in enumerate(rs):
                for ci, c in enumerate(cs):
                    values = np.asarray(table[ri, ci])
                    if (values != NOT_RECORDED).all():  # complete rows never change: cache them
                        self._recorded[(*key0, r, c)] = values
                    out[(r, c)] = int(values[j])
        return out

    def read_tile(self, stage: str, name: str, step: int | None, row: int, col: int) -> np.ndarray:
        """The chunk of tile (row, col) of ``step``'s grid, checked against its recorded checksum.

        Raises
        ------
        ChunkCorruptError
            If the chunk cannot be read or does not match what its writer recorded.
        """
        return self._read_tiles(stage, name, step, [row], [col])[(row, col)]

    def _read_tiles(
        self, stage: str, name: str, step: int | None, rows: Sequence[int], cols: Sequence[int]
    ) -> dict[tuple[int, int], np.ndarray]:
        st = self.stage(stage)
        a = self.array(f"{stage}/{name}")
        lead = () if step is None else (st.step_index(step),)
        middle = (slice(None),) * (a.ndim - len(lead) - 2)
        expected = self.recorded_checksums(stage, name, step, rows, cols)
        out = {}
        for r in dict.fromkeys(rows):
            for c in dict.fromkeys(cols):
                where = f"{stage}/{name} " + ("" if step is None else f"step {step} ") + f"tile ({r}, {c})"
                sel = (
                    lead
                    + middle
                    + (
                        slice(r * st.tile_h, (r + 1) * st.tile_h),
                        slice(c * st.tile_w, (c + 1) * st.tile_w),
                    )
                )
                try:
                    block = a[sel]
                except Exception as exc:  # an undecodable or truncated chunk
                    raise ChunkCorruptError(where, f"unreadable ({type(exc).__name__}: {exc})") from exc
                want = expected[(r, c)]
                if want != NOT_RECORDED and crc32(block) != want:
                    raise ChunkCorruptError(where, "checksum mismatch (changed or missing on disk)")
                out[(r, c)] = block
        return out

    def read_region(
        self,
        stage: str,
        name: str,
        step: int | None,
        y0: int,
        x0: int,
        h: int,
        w: int,
        *,
        sub: tuple[int, ...] = (),
        verify: str | tuple[int, int] | None = "all",
    ) -> np.ndarray:
        """Read a window of the canvas (wrapping at the edges) from a step's rolled array.

        ``verify`` says which chunks under the window are checked against their recorded
        checksums (``ChunkCorruptError`` on a mismatch): ``"all"`` (read whole), a tile
        ``(row, col)`` (that chunk only: a tile task checks the chunk of its own index, which the
        same tile of the next step always overlaps, so every chunk is checked once and not four
        times), or ``None``. Chunks without a recorded checksum (unfinished) are never checked.
        """
        st = self.stage(stage)
        a = self.array(f"{stage}/{name}")
        oy, ox = st.offset_of(step)
        sy, sx = (y0 - oy) % st.canvas_h, (x0 - ox) % st.canvas_w
        rows = [(sy // st.tile_h + i) % st.rows for i in range(-(-(sy % st.tile_h + h) // st.tile_h))]
        cols = [(sx // st.tile_w + i) % st.cols for i in range(-(-(sx % st.tile_w + w) // st.tile_w))]
        # sub-indexed arrays (guidance branch outputs) are intermediate and carry no checksums
        check = self._has_checksums and self.verify_reads and verify is not None and not sub
        recorded = self.recorded_checksums(stage, name, step, rows, cols) if check else {}
        check = check and any(v != NOT_RECORDED for v in recorded.values())
        if check and (verify == "all" or tuple(verify) not in recorded):
            tiles = self._read_tiles(stage, name, step, rows, cols)
            mosaic = np.concatenate(
                [np.concatenate([tiles[(r, c)] for c in cols], axis=-1) for r in rows], axis=-2
            )
            ty, tx = sy % st.tile_h, sx % st.tile_w
            return np.ascontiguousarray(mosaic[..., ty : ty + h, tx : tx + w])
        if check:
            self._read_tiles(stage, name, step, [verify[0]], [verify[1]])
        where = (
            f"{stage}/{name} " + ("" if step is None else f"step {step} ") + f"window ({y0}, {x0}, {h}, {w})"
        )
        lead = (() if step is None else (st.step_index(step),)) + tuple(sub)
        middle = (slice(None),) * (a.ndim - len(lead) - 2)
        pieces = []
        try:
            for ya, yn in _pieces(y0 - oy, h, st.canvas_h):
                part = [
                    a[lead + middle + (slice(ya, ya + yn), slice(xa, xa + xn))]
                    for xa, xn in _pieces(x0 - ox, w, st.canvas_w)
                ]
                pieces.append(part[0] if len(part) == 1 else np.concatenate(part, axis=-1))
        except Exception as exc:  # an undecodable or truncated chunk
            raise ChunkCorruptError(where, f"unreadable ({type(exc).__name__}: {exc})") from exc
        out = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=-2)
        if check and name in ("latents", "start", "anchor") and not np.isfinite(out).all():
            # finished latents are always finite (tasks check): a chunk here went missing
            raise ChunkCorruptError(
                where, "non-finite values where finished latents are (a chunk is missing)"
            )
        return out

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
        if self._has_checksums:
            with self._lock:
                pending = self._pending.pop((stage, step, row, col), {})
            sums = np.array([pending.get(n, NOT_RECORDED) for n in checked_arrays(st)], dtype=np.int64)
            self.array(f"{stage}/checksums")[i, row, col, :] = sums
        table = self.array(f"{stage}/tile_stats")
        table[i, row, col, :] = row_values[: table.shape[-1]]
        self.array(f"{stage}/done")[i, row, col] = 1

    def clear_done(self, stage: str, step: int, row: int, col: int) -> None:
        """Forget that a tile is finished (its chunk was found corrupt): the next run recomputes it."""
        st = self.stage(stage)
        i = st.step_index(step)
        self.array(f"{stage}/done")[i, row, col] = 0
        with self._lock:
            for key in [k for k in self._recorded if k[1] == i and k[2:] == (row, col)]:
                self._recorded.pop(key, None)

    def tile_record(self, stage: str, step: int, row: int, col: int) -> dict[str, float]:
        """One tile step's stats row (what ``mark_done`` recorded), by field name."""
        st = self.stage(stage)
        values = self.array(f"{stage}/tile_stats")[st.step_index(step), row, col, :]
        return {f: float(v) for f, v in zip(STAT_FIELDS, values, strict=False)}

    def write_cache_scale(self, stage: str, update: int, scales: np.ndarray) -> None:
        """The region-aware threshold multipliers ``(rows, cols)`` of ranking ``update`` (one chunk,
        written by the one task that ranks)."""
        self.array(f"{stage}/cache_scale")[update] = np.asarray(scales, dtype=np.float64)

    def read_cache_scale(self, stage: str, update: int, row: int, col: int) -> float:
        value = float(self.array(f"{stage}/cache_scale")[update, row, col])
        if not np.isfinite(value):
            raise ChunkCorruptError(f"{stage}/cache_scale[{update}]", "never written")
        return value

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

    def clear_task_done(self, task: str) -> None:
        """Forget that a one-off task is finished: the next run redoes it."""
        self.array("task_done")[self.task_index(task)] = 0

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
        if self._has_checksums:  # what was deleted has no checksum to fail any more
            for st in self.layout.stages:
                sums = f"{st.name}/checksums"
                for i in range(len(st.steps) - 1):
                    sync(store.delete_dir(f"{base}/{sums}/c/{i}" if base else f"{sums}/c/{i}"))
                if st.state_slots:
                    self.array(sums)[len(st.steps) - 1, :, :, 1:] = NOT_RECORDED
            with self._lock:
                self._recorded.clear()
        self.update_attrs(pruned=True)
        return len(prefixes)

    def _has_image_checksums(self, stage: str) -> bool:
        known = self._image_sums.get(stage)
        if known is None:  # stores made before image conditions had checksums have none
            known = self._image_sums[stage] = f"{stage}/image_checksums" in self.root
        return known

    # -- image-to-video: a stage's global image embeddings ----------------------------------------
    def write_image_embeds(self, stage: str, embeds: np.ndarray) -> None:
        """Write a stage's ``(tokens, dim)`` image embeddings and record their checksum (the stage's
        image task's marker vouches for both)."""
        data = np.ascontiguousarray(embeds, dtype=np.float32)
        self.array(f"{stage}/image_embeds")[...] = data
        if f"{stage}/image_embeds_checksum" in self.root:
            self.array(f"{stage}/image_embeds_checksum")[0] = crc32(data)

    def read_image_embeds(self, stage: str) -> np.ndarray:
        """A stage's image embeddings, checked against the recorded checksum."""
        where = f"{stage}/image_embeds"
        try:
            a = self.array(where)[...]
        except Exception as exc:
            raise ChunkCorruptError(where, f"unreadable ({type(exc).__name__}: {exc})") from exc
        if f"{stage}/image_embeds_checksum" in self.root:
            want = int(self.array(f"{stage}/image_embeds_checksum")[0])
            if want != NOT_RECORDED and crc32(a) != want:
                raise ChunkCorruptError(where, "checksum mismatch (changed or missing on disk)")
        return a

    # -- prompt embeddings ----------------------------------------------------------------------
    def write_prompt_embeds(self, negative: np.ndarray, positive: np.ndarray) -> None:
        data = np.stack([negative, positive]).astype(np.float32)
        self.array("prompt_embeds")[...] = data
        if self._has_checksums:
            self.array("prompt_checksum")[0] = crc32(data)

    def read_prompt_embeds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(negative, positive)``, each ``(tokens, dim)``, checked against the recorded checksum."""
        try:
            a = self.array("prompt_embeds")[...]
        except Exception as exc:
            raise ChunkCorruptError("prompt_embeds", f"unreadable ({type(exc).__name__}: {exc})") from exc
        if self._has_checksums:
            want = int(self.array("prompt_checksum")[0])
            if want != NOT_RECORDED and crc32(a) != want:
                raise ChunkCorruptError("prompt_embeds", "checksum mismatch (changed or missing on disk)")
        return a[0], a[1]

    # -- pixels ---------------------------------------------------------------------------------
    def write_sketch_pixels(self, video: np.ndarray) -> None:
        self.array("sketch_pixels")[...] = video

    def read_sketch_pixels(self) -> np.ndarray:
        return self.array("sketch_pixels")[...]

    def write_region_pixels(self, region: DecodeRegion, video: np.ndarray) -> None:
        a = self.array(f"decoded/{region.name}")
        video = np.ascontiguousarray(video, dtype=a.dtype)
        a[...] = video
        if self._has_checksums:
            fpc = self.layout.decode.frames_per_chunk
            sums = [crc32(video[s : s + fpc]) for s in range(0, len(video), fpc)]
            self.array("decoded/checksums")[self._region_index(region), :] = np.asarray(sums, np.int64)

    def _region_index(self, region: DecodeRegion) -> int:
        return [r.name for r in self.layout.decode.regions].index(region.name)

    def read_region_pixels(self, region: DecodeRegion, frames: slice | None = None) -> np.ndarray:
        """Decoded pixels of one region (``frames`` in whole frame chunks are checked against their
        recorded checksums; ``ChunkCorruptError`` if one differs or cannot be read)."""
        d = self.layout.decode
        a = self.array(f"decoded/{region.name}")
        start, stop, _ = (frames or slice(None)).indices(d.frames)
        where = f"decoded/{region.name} frames {start}..{stop - 1}"
        try:
            pix = a[start:stop]
        except Exception as exc:
            raise ChunkCorruptError(where, f"unreadable ({type(exc).__name__}: {exc})") from exc
        if self._has_checksums:
            fpc = d.frames_per_chunk
            sums = self.array("decoded/checksums")[self._region_index(region)]
            for j, want in enumerate(np.asarray(sums)):
                s0, s1 = j * fpc, min(d.frames, (j + 1) * fpc)
                if want == NOT_RECORDED or s0 < start or s1 > stop:
                    continue
                if crc32(pix[s0 - start : s1 - start]) != int(want):
                    raise ChunkCorruptError(
                        f"decoded/{region.name} frames {s0}..{s1 - 1}",
                        "checksum mismatch (changed or missing on disk)",
                    )
        return pix

    def decoded_frames(self, frames: Sequence[int] | slice | None = None) -> np.ndarray:
        """Blend the decoded regions into whole frames ``(F, H, W, 3)`` uint8 (valid area only)."""
        d = self.layout.decode
        index = np.arange(d.frames)[frames if frames is not None else slice(None)]

        def pieces():
            for reg in d.regions:
                if len(index) and np.array_equal(index, np.arange(index[0], index[-1] + 1)):
                    yield reg, self.read_region_pixels(reg, slice(int(index[0]), int(index[-1]) + 1))
                else:
                    yield (
                        reg,
                        self.array(f"decoded/{reg.name}").get_orthogonal_selection(
                            (index, slice(None), slice(None), slice(None))
                        ),
                    )

        try:
            return blend_regions_uint8(pieces(), d.scale, d.valid_h, d.valid_w, d.blend)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None

    def iter_decoded(self, chunk: int | None = None) -> Iterator[np.ndarray]:
        """Yield decoded frames one at a time, reading ``chunk`` frames per pass (default: the
        stored frame chunk, so every chunk is read once)."""
        total = self.layout.decode.frames
        chunk = chunk or self.layout.decode.frames_per_chunk
        for s in range(0, total, chunk):
            yield from self.decoded_frames(slice(s, min(total, s + chunk)))
