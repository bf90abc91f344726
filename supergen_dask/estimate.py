"""What a plan will cost before it runs, and the limits that refuse absurd requests.

The estimate is arithmetic on the plan (no store, no model): tile tasks, the bytes of the store
once the render is finished (uncompressed, what retention keeps) and while it runs, the data the
largest task holds in memory (plus the model's weights when they are files on disk), and, from
the model's measured cost on one GPU, the peak GPU memory of a worker and the denoising time
(``supergen_dask.gpu_cost``: estimates for that card, labelled as such). Limits live in ``dask.config``
under ``supergen.limits``; a plan over one is refused with the numbers and the setting to raise.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dask.utils

from supergen_dask import config
from supergen_dask.gpu_cost import GpuCost, gpu_cost

if TYPE_CHECKING:
    from supergen_dask.plan import RenderPlan

__all__ = ["LimitError", "RenderEstimate", "estimate_plan", "check_limits", "check_disk", "limit"]


class LimitError(ValueError):
    """A render over a ``supergen.limits`` setting; refused before anything is written."""


@dataclass(frozen=True)
class RenderEstimate:
    """The cost of a plan. Byte counts are upper bounds of data, not of model activations.

    ``store_bytes`` is the store once every chunk is written, uncompressed (``store_parts`` by
    kind); ``task_bytes`` the data the largest task (``task``) holds in host memory at once;
    ``weights_bytes`` the model's weight files (``None`` for models built in code).
    """

    tile_tasks: int
    store_bytes: int
    store_parts: dict
    task_bytes: int
    task: str
    weights_bytes: int | None
    # the store while the render runs: what stays plus the steps not yet freed (retention)
    store_peak_bytes: int | None = None
    # ``supergen_dask.gpu_cost``: an estimate for one card in bf16 (None: no model config)
    gpu: GpuCost | None = None

    @property
    def worker_bytes(self) -> int:
        """Peak host memory of a worker: the largest task's data plus the resident weights."""
        return self.task_bytes + (self.weights_bytes or 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "worker_bytes": self.worker_bytes}

    def summary(self) -> str:
        """One line: tasks, store and host memory (``gpu.summary()`` says the GPU part)."""
        weights = "" if self.weights_bytes is None else f" + {_b(self.weights_bytes)} weights"
        peak = ""
        if self.store_peak_bytes is not None and self.store_peak_bytes > self.store_bytes:
            peak = f" (up to {_b(self.store_peak_bytes)} while running)"
        return (
            f"estimate: {self.tile_tasks:,} tile tasks, store {_b(self.store_bytes)} uncompressed{peak}, "
            f"worker memory {_b(self.task_bytes)} ({self.task}){weights}"
        )


def _b(n: int) -> str:
    return dask.utils.format_bytes(int(n))


def _weights_bytes(model: str) -> int | None:
    from pipelines import model_directory

    root = model_directory(model)
    if root is None:  # built in code
        return None
    return sum(f.stat().st_size for f in root.rglob("*.safetensors"))


def _axis_windows(valid: int, core: int, margin: int) -> list[int]:
    """Window lengths of the decode regions along one axis (``plan.decode_regions``' rule)."""
    out = []
    for y in range(0, valid, core):
        c = min(core, valid - y)
        out.append(min(valid, y + c + margin) - max(0, y - margin))
    return out


def _store_parts(plan: RenderPlan) -> dict[str, int]:
    """``storage.layout_nbytes(plan.layout())`` without building the layout: per-axis sums
    instead of one object per decode region, so a plan of millions of tiles costs milliseconds."""
    from storage.store import STAT_FIELDS
    from supergen_dask.retention import kept_steps

    parts = {"latents": 0, "state": 0, "pixels": 0, "records": 0}
    out = plan.spec.output
    dtype = 2 if out.store_dtype == "float16" else 4
    keep_every = 1 if out.keep_every is None else out.keep_every
    history = True if out.keep_history is None else out.keep_history
    slots = plan.state_slots
    k = 1 + len(slots)
    for st in plan.stages:
        g = st.grid
        canvas = st.latent_frames * st.channels * g.canvas_h * g.canvas_w
        n, tiles = len(st.steps), g.n_tiles
        kept = len(kept_steps(st.steps, keep_every))  # retention: what stays once finished
        anchor = plan.anchored and st.name == "refine"
        parts["latents"] += canvas * (dtype * (kept + 1) + (4 if anchor else 0))
        parts["state"] += sum(slots.values()) * (n if history else 0) * canvas * dtype
        if st.split_guidance and history:  # each guidance branch's float32 output, every step
            parts["state"] += 2 * n * canvas * 4
        cached = plan.cache is not None and st.name == "refine"
        if cached:  # the residual cache's three canvases per step, freed with the history
            parts["state"] += 3 * (n if history else 0) * canvas * dtype
            parts["records"] += max(1, len(plan.cache_updates())) * tiles * 8
        checked = k + (1 if cached else 0)
        parts["records"] += n * tiles * (1 + 8 * len(STAT_FIELDS) + 8 * checked) + tiles * 8 * (
            2 if anchor else 1
        )
        parts["records"] += n * 16
    if plan.seam is not None:  # one step, its start array unused, latents checksummed only
        g = plan.seam.grid
        parts["latents"] += plan.seam.latent_frames * plan.seam.channels * g.canvas_h * g.canvas_w * dtype * 2
        parts["records"] += g.n_tiles * (1 + 8 * len(STAT_FIELDS) + 8) + g.n_tiles * 8 + 16
    g, f, m = plan.refine.grid, plan.model.spatial_factor, plan.decode_margin
    ys, xs = _axis_windows(g.valid_h, g.tile_h, m), _axis_windows(g.valid_w, g.tile_w, m)
    frames, fpc = plan.pixel_frames, 16
    parts["pixels"] += frames * sum(ys) * sum(xs) * f * f * 3
    parts["records"] += len(ys) * len(xs) * -(-frames // fpc) * 8
    if plan.sketch is not None:
        parts["pixels"] += frames * plan.sketch.grid.canvas_h * plan.sketch.grid.canvas_w * f * f * 3
    # plan.tasks: prompt, stage init, encode, decode regions, mp4 segments; upscale and one start
    # per refinement tile with a sketch
    n_tasks = 3 + len(ys) * len(xs) + len(plan.encode_segments()) + len(plan.free_tasks())
    n_tasks += len(plan.cache_updates())
    if plan.sketch is not None:
        n_tasks += 1 + g.n_tiles
    parts["records"] += 2 * plan.model.text_tokens * plan.model.text_embed_dim * 4 + 8 + n_tasks
    return parts


def estimate_plan(plan: RenderPlan) -> RenderEstimate:
    """Tile tasks, store bytes and peak per-task memory of ``plan`` (pure arithmetic)."""
    parts = _store_parts(plan)
    f = plan.model.spatial_factor
    rf = plan.refine
    g = rf.grid
    frames, pix_frames, C = rf.latent_frames, plan.pixel_frames, rf.channels
    slots = sum(plan.state_slots.values())
    branches = 2 if plan.cfg else 1

    def tile_task(stage) -> int:
        tile = stage.latent_frames * C * stage.grid.tile_h * stage.grid.tile_w * 4
        # input window (+ mosaic), scaled input, model in/out per branch, guidance, new sample,
        # state read + written + staging, anchor
        return tile * (6 + 3 * branches + 3 * slots + (2 if plan.anchored else 0))

    tasks = {"denoise": tile_task(rf)}
    if plan.sketch is not None:
        sk = plan.sketch
        tasks["sketch"] = tile_task(sk)
        sketch_px = pix_frames * 3 * sk.grid.canvas_h * sk.grid.canvas_w * f * f * 4
        canvas_px = pix_frames * 3 * g.canvas_h * g.canvas_w * f * f * 4
        canvas_lat = frames * C * g.canvas_h * g.canvas_w * 4
        # decoded sketch, upscaled and padded copies, encoder input; latents, noise, start, anchor
        tasks["upscale"] = 2 * sketch_px + 3 * canvas_px + 5 * canvas_lat
    m = plan.decode_margin
    wh = max(_axis_windows(g.valid_h, g.tile_h, m))
    ww = max(_axis_windows(g.valid_w, g.tile_w, m))
    tasks["decode"] = pix_frames * 3 * wh * ww * f * f * (4 * 2 + 1) + frames * C * wh * ww * 4 * 2
    tasks["encode"] = min(16, pix_frames) * g.valid_h * g.valid_w * f * f * 3 * (4 + 2)
    task = max(tasks, key=tasks.get)
    from pipelines import transformer_config

    store = sum(parts.values())
    return RenderEstimate(
        tile_tasks=plan.n_tile_tasks(),
        store_bytes=store,
        store_parts=parts,
        task_bytes=int(tasks[task]),
        task=task,
        weights_bytes=_weights_bytes(plan.spec.model),
        store_peak_bytes=store + _unfreed_bytes(plan),
        gpu=gpu_cost(plan, transformer_config(plan.spec.model)),
    )


def _unfreed_bytes(plan: RenderPlan) -> int:
    """Bytes of the steps that retention frees but that are still on disk while the render runs:
    with neighbour-only dependencies, about three steps of each stage are in flight at once."""
    out = plan.spec.output
    dtype = 2 if out.store_dtype == "float16" else 4
    slots = sum(plan.state_slots.values())
    total = 0
    for st in plan.stages:
        canvas = st.latent_frames * st.channels * st.grid.canvas_h * st.grid.canvas_w
        per_step = 0
        if out.keep_every is not None and out.keep_every != 1:
            per_step += canvas * dtype
        if out.keep_history is False:
            per_step += slots * canvas * dtype + (2 * canvas * 4 if st.split_guidance else 0)
        total += min(3, len(st.steps)) * per_step
    return total


def limit(name: str) -> int | None:
    """``supergen.limits.<name>`` as a number (byte sizes such as ``"64GiB"`` parsed); ``None``
    when unlimited. ``max-worker-memory: auto`` is this machine's memory."""
    value = config.get(f"limits.{name}")
    if value in (None, "none", 0):
        return None
    if value == "auto":
        import psutil

        return int(psutil.virtual_memory().total)
    if isinstance(value, str):
        return int(dask.utils.parse_bytes(value))
    return int(value)


def _over(what: str, value: int, setting: str, fmt=_b) -> str:
    cap = limit(setting)
    if cap is None or value <= cap:
        return ""
    return f"{what} {fmt(value)} > {fmt(cap)} (supergen.limits.{setting})"


def check_limits(plan: RenderPlan, estimate: RenderEstimate | None = None) -> RenderEstimate:
    """Raise ``LimitError`` if ``plan`` is over a ``supergen.limits`` setting (unless
    ``supergen.limits.enabled`` is false); returns the estimate."""
    est = estimate or estimate_plan(plan)
    if not config.get("limits.enabled", True):
        return est
    problems = [
        _over("tile tasks", est.tile_tasks, "max-tile-tasks", fmt=lambda n: f"{n:,}"),
        _over("store", est.store_peak_bytes or est.store_bytes, "max-store-bytes"),
        _over("worker memory", est.worker_bytes, "max-worker-memory"),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise LimitError(
            f"render too large: {'; '.join(problems)}; {est.summary()}; raise the setting "
            "(e.g. DASK_SUPERGEN__LIMITS__MAX_STORE_BYTES=10TB) or pass --force"
        )
    return est


def check_disk(plan: RenderPlan, render_dir: str | Path) -> None:
    """Raise ``LimitError`` if a new render's uncompressed store cannot fit the free space of the
    filesystem it goes to (skipped for an existing store, a compressed one, limits off, or a
    render directory on a remote filesystem, whose free space is not known)."""
    if not config.get("limits.enabled", True) or config.get("storage.compressor") not in (None, "none"):
        return
    loc = config.location(render_dir)
    if not loc.is_local:
        return
    target = loc.local_path.absolute()
    if (target / "render.zarr").exists():
        return
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        return
    est = estimate_plan(plan)
    need = est.store_peak_bytes or est.store_bytes
    free = shutil.disk_usage(existing).free
    if need > free:
        raise LimitError(
            f"render too large for {existing}: the store needs {_b(need)}, {_b(free)} free "
            "(a compressor, supergen.storage.compressor: zstd, or --force to try anyway)"
        )
