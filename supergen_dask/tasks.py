"""Task functions: each reads its inputs from the render's store, computes, writes whole chunks it
alone owns, marks itself done, and returns a small receipt (never a tensor).

Every task is idempotent: one whose done marker is already set returns at once, so a resumed or
re-run render never recomputes finished work. Trailing ``*deps`` arguments are the receipts of
upstream tasks; they only order the graph.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from supergen_dask import config, worker_models
from supergen_dask.geometry import TileKey
from supergen_dask.noise import position_noise, window_noise
from supergen_dask.plan import RenderPlan, StagePlan
from supergen_dask.stepping import RegionStep, check_finite, initial_noise_sigma, renoise

__all__ = [
    "encode_prompt",
    "init_stage",
    "denoise_tile",
    "upscale_sketch",
    "decode_region",
    "encode_output",
    "measure_quality",
    "worker_code",
    "worker_name",
]


def worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def worker_code(name: str) -> float:
    """The number a worker's address is stored as in ``tile_stats`` (the driver maps it back)."""
    return float(zlib.crc32(name.encode()))


def _store(url: str, instance: str):
    from storage import RenderStore

    return RenderStore.cached(url, instance)


def _receipt(kind: str, name: str, t0: float, **extra: Any) -> dict[str, Any]:
    return {"task": kind, "name": name, "worker": worker_name(), "seconds": time.perf_counter() - t0, **extra}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_model(x: np.ndarray, device) -> torch.Tensor:
    """Stored ``(F, C, h, w)`` -> model layout ``(1, C, F, h, w)`` float32."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device).permute(1, 0, 2, 3)[None]


def _to_store(x: torch.Tensor, dtype: str) -> np.ndarray:
    """Model layout ``(1, C, F, h, w)`` -> stored ``(F, C, h, w)``."""
    # no extra copy on the hot path: the store makes the one contiguous copy it writes
    return x[0].permute(1, 0, 2, 3).float().cpu().numpy().astype(dtype, copy=False)


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(1, 3, F, H, W)`` in [-1, 1] -> ``(F, H, W, 3)`` uint8."""
    v = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(1, 2, 3, 0).cpu().numpy()


# -- prompt ---------------------------------------------------------------------------------------
def encode_prompt(plan: RenderPlan, url: str, instance: str, *deps) -> dict:
    """Encode the prompt and negative prompt once; denoise tasks read the result from the store."""
    t0 = time.perf_counter()
    store = _store(url, instance)
    if store.task_is_done("prompt"):
        return _receipt("prompt", "prompt", t0, skipped=True)
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    pos, neg = backend.encode_prompt(plan.spec.prompt, plan.spec.negative_prompt)
    store.write_prompt_embeds(neg.numpy(), pos.numpy())
    store.mark_task_done("prompt")
    return _receipt("prompt", "prompt", t0)


# -- stage inputs ---------------------------------------------------------------------------------
def _write_start(store, stage: StagePlan, canvas: torch.Tensor, dtype: str, name: str = "start") -> None:
    """Write a whole-canvas ``(1, C, F, H, W)`` stage input tile by tile (first step's grid)."""
    th, tw = stage.grid.tile_h, stage.grid.tile_w
    for key in stage.keys(stage.first):
        y0, x0 = stage.origin(key)
        ys = [(y0 + i) % stage.grid.canvas_h for i in range(th)]
        xs = [(x0 + i) % stage.grid.canvas_w for i in range(tw)]
        tile = canvas[..., ys, :][..., xs]
        store.write_tile(stage.name, name, None, key.row, key.col, _to_store(tile, dtype))


def init_stage(plan: RenderPlan, url: str, instance: str, stage_name: str, *deps) -> dict:
    """Pure noise (from seed and canvas position) as a stage's start: the sketch, or a refine
    stage that starts from noise (k == num_inference_steps)."""
    t0 = time.perf_counter()
    task = f"{stage_name}_init"
    store = _store(url, instance)
    if store.task_is_done(task):
        return _receipt("init", task, t0, skipped=True)
    st = plan.stage(stage_name)
    g = st.grid
    noise = position_noise(
        plan.spec.seed, stage_name, st.latent_frames, st.channels, 0, 0, g.canvas_h, g.canvas_w
    )
    canvas = (noise * initial_noise_sigma(plan.scheduler)).permute(1, 0, 2, 3)[None]
    _write_start(store, st, canvas, plan.spec.output.store_dtype)
    store.mark_task_done(task)
    return _receipt("init", task, t0)


def upscale_sketch(plan: RenderPlan, url: str, instance: str, *deps) -> dict:
    """Decode the finished sketch, upscale it bicubically in pixel space, pad it to the canvas,
    encode it (tiled VAE) and re-noise it to the first refinement step."""
    t0 = time.perf_counter()
    store = _store(url, instance)
    if store.task_is_done("upscale"):
        return _receipt("upscale", "upscale", t0, skipped=True)
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    device = backend.device
    sk, rf = plan.sketch, plan.refine
    z = _to_model(store.read_canvas("sketch", "latents", sk.last), device)
    video = backend.vae_decode(z)  # (1, 3, F, h, w) in [-1, 1]
    store.write_sketch_pixels(_to_uint8(video))

    f = plan.model.spatial_factor
    H, W = plan.spec.height, plan.spec.width
    CH, CW = rf.grid.canvas_h * f, rf.grid.canvas_w * f
    frames = video[0].permute(1, 0, 2, 3)  # (F, 3, h, w)
    up = F.interpolate(frames, size=(H, W), mode="bicubic", align_corners=False).clamp(-1, 1)
    ph, pw = CH - H, CW - W
    if ph or pw:
        mode = "reflect" if ph < H and pw < W else "replicate"
        up = F.pad(up, (0, pw, 0, ph), mode=mode)
    z = backend.vae_encode(up.permute(1, 0, 2, 3)[None])  # (1, C, F, CH/f, CW/f)
    expected = (rf.latent_frames, rf.grid.canvas_h, rf.grid.canvas_w)
    if tuple(z.shape[2:]) != expected:
        raise RuntimeError(f"VAE encode gave latents {tuple(z.shape)}, expected (*, *, {expected})")
    g = rf.grid
    noise = position_noise(
        plan.spec.seed, "refine", rf.latent_frames, rf.channels, 0, 0, g.canvas_h, g.canvas_w
    )
    noise = noise.permute(1, 0, 2, 3)[None].to(z.device)
    start = renoise(plan.scheduler, rf.first, z.float(), noise)
    _write_start(store, rf, start, plan.spec.output.store_dtype)
    if plan.anchored:
        _write_start(store, rf, z.float(), "float32", name="anchor")
    store.mark_task_done("upscale")
    return _receipt("upscale", "upscale", t0)


# -- the tile task --------------------------------------------------------------------------------
def denoise_tile(plan: RenderPlan, url: str, instance: str, key: TileKey, session: int, *deps) -> dict:
    """One denoising step of one tile: read the tile's window of the previous step (and the
    scheduler history of that region), predict with classifier-free guidance, update the region
    with the scheduler, write the tile's chunks, mark it done."""
    t0, started = time.perf_counter(), time.time()
    store = _store(url, instance)
    name = f"{key.stage}/{key.step}/{key.row}/{key.col}"
    if store.is_done(key.stage, key.step, key.row, key.col):
        return _receipt("denoise", name, t0, skipped=True)
    st = plan.stage(key.stage)
    g = st.grid
    y0, x0 = st.origin(key)
    first = key.step == st.first
    prev = None if first else key.step - 1

    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    backend.load_transformer()
    device = backend.device
    t_read0 = time.perf_counter()
    own = (key.row, key.col)  # the one chunk of each array this task checks (store.read_region)
    x = store.read_region(key.stage, "start" if first else "latents", prev, y0, x0, g.tile_h, g.tile_w, own)
    region = RegionStep(plan.scheduler, st.first, key.step)
    state = {}
    for sname, slots in region.present().items():
        if slots:
            arr = store.read_region(key.stage, f"state_{sname}", prev, y0, x0, g.tile_h, g.tile_w, own)
            state[sname] = {s: _to_model(arr[s], device) for s in slots}
    region.load(state)
    neg, pos = worker_models.prompt_embeds(store, device)
    sample = _to_model(x, device)
    weight = plan.anchor_weight(key.step) if key.stage == "refine" else 0.0
    if weight > 0:
        # sketch anchoring: pull the tile toward the upscaled sketch re-noised to this step
        clean = store.read_region("refine", "anchor", None, y0, x0, g.tile_h, g.tile_w, own)
        clean = _to_model(clean, device)
        eps = window_noise(
            plan.spec.seed,
            "refine",
            st.latent_frames,
            st.channels,
            y0,
            x0,
            g.tile_h,
            g.tile_w,
            g.canvas_h,
            g.canvas_w,
        )
        anchor = renoise(plan.scheduler, key.step, clean, eps.permute(1, 0, 2, 3)[None].to(device))
        sample = (1 - weight) * sample + weight * anchor
    t_read = time.perf_counter() - t_read0

    t_fwd0 = time.perf_counter()
    model_in = region.scale_model_input(sample)
    t = region.timestep.to(device)
    if plan.cfg:
        out = backend.predict(torch.cat([model_in, model_in]), t.expand(2), torch.stack([neg, pos]), (y0, x0))
        uncond, cond = out.chunk(2)
        noise_pred = uncond + plan.spec.guidance_scale * (cond - uncond)
    else:
        noise_pred = backend.predict(model_in, t.expand(1), pos[None], (y0, x0))
    new, new_state = region.step(noise_pred.float(), sample)
    check_finite(new, key, plan.spec.guidance_scale, plan.spec.dtype)
    _sync(device)
    t_fwd = time.perf_counter() - t_fwd0

    t_write0 = time.perf_counter()
    dtype = plan.spec.output.store_dtype
    slots = plan.state_slots
    for sname, values in new_state.items():
        arr = np.full(
            (slots[sname], st.latent_frames, st.channels, g.tile_h, g.tile_w), np.nan, dtype=np.float32
        )
        for s, v in values.items():
            arr[s] = _to_store(v, "float32")
        store.write_tile(key.stage, f"state_{sname}", key.step, key.row, key.col, arr)
    store.write_tile(key.stage, "latents", key.step, key.row, key.col, _to_store(new, dtype))
    t_write = time.perf_counter() - t_write0

    worker = worker_name()
    seconds = time.perf_counter() - t0
    store.mark_done(
        key.stage,
        key.step,
        key.row,
        key.col,
        {
            "started": started,
            "seconds": seconds,
            "read_seconds": t_read,
            "forward_seconds": t_fwd,
            "write_seconds": t_write,
            "session": session,
            "worker": worker_code(worker),
            "computed": 1,
        },
    )
    return {
        "task": "denoise",
        "name": name,
        "worker": worker,
        "seconds": seconds,
        "read_seconds": t_read,
        "forward_seconds": t_fwd,
        "write_seconds": t_write,
    }


# -- output ---------------------------------------------------------------------------------------
def decode_region(plan: RenderPlan, url: str, instance: str, index: int, *deps) -> dict:
    """VAE-decode one region of the final latents (with its context margin) to uint8 pixels."""
    t0 = time.perf_counter()
    store = _store(url, instance)
    reg = plan.decode_regions()[index]
    task = f"decode_{reg.row}_{reg.col}"
    if store.task_is_done(task):
        return _receipt("decode", task, t0, skipped=True)
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    wy, wx, wh, ww = reg.window
    z = _to_model(store.read_region("refine", "latents", plan.refine.last, wy, wx, wh, ww), backend.device)
    store.write_region_pixels(reg, _to_uint8(backend.vae_decode(z)))
    store.mark_task_done(task)
    return _receipt("decode", task, t0)


def encode_output(plan: RenderPlan, url: str, instance: str, video_path: str, *deps) -> dict:
    """Blend the decoded regions frame by frame and encode the video (one sequential consumer)."""
    from pathlib import Path

    from storage import encode_video

    t0 = time.perf_counter()
    store = _store(url, instance)
    if store.task_is_done("encode") and Path(video_path).exists():
        return _receipt("encode", "encode", t0, skipped=True, path=video_path)
    out = plan.spec.output
    info = encode_video(
        store.iter_decoded(),
        video_path,
        fps=plan.spec.fps,
        codec=out.codec,
        crf=out.crf,
        threads=int(config.get("encode.threads")),
    )
    store.mark_task_done("encode")
    return _receipt("encode", "encode", t0, path=info.path, frames=info.frames)


def measure_quality(plan: RenderPlan, url: str, instance: str, *deps) -> dict:
    """Quality metrics of the finished render (seams, duplicates, detail, flicker); the driver
    writes them into the store's attributes."""
    from supergen_dask.quality import render_quality

    t0 = time.perf_counter()
    store = _store(url, instance)
    return _receipt("quality", "quality", t0, quality=render_quality(plan, store))
