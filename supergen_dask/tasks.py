"""Task functions: each reads its inputs from the render's store, computes, writes whole chunks it
alone owns, marks itself done, and returns a small receipt (never a tensor).

Every task is idempotent: one whose done marker is already set returns at once, so a resumed or
re-run render never recomputes finished work. Trailing ``*deps`` arguments are the receipts of
upstream tasks; they only order the graph.
"""

from __future__ import annotations

import math
import time
import zlib
from typing import Any

import numpy as np
import torch

from supergen_dask import cache as region_cache
from supergen_dask import config, transfer, worker_models
from supergen_dask.conditioning import blank_condition, prompt_options, tile_image
from supergen_dask.geometry import TileKey
from supergen_dask.noise import position_noise, window_noise
from supergen_dask.plan import RenderPlan, StagePlan
from supergen_dask.stepping import (
    NonFiniteError,
    RegionStep,
    check_finite,
    finite_flags,
    initial_noise_sigma,
    raise_unless_finite,
    renoise,
)
from supergen_dask.upscale import context_window, upscale_window
from supergen_dask.worker_models import worker_name

__all__ = [
    "encode_prompt",
    "init_stage",
    "denoise_tile",
    "predict_branch",
    "combine_branches",
    "cache_step",
    "rank_cache_tiles",
    "warm_worker",
    "upscale_sketch",
    "encode_start",
    "decode_region",
    "seam_tile",
    "encode_segment",
    "encode_output",
    "measure_detail_reference",
    "measure_quality",
    "sketch_preview",
    "worker_code",
    "worker_name",
]


def worker_code(name: str) -> float:
    """The number a worker's address is stored as in ``tile_stats`` (the driver maps it back)."""
    return float(zlib.crc32(name.encode()))


def _store(url, instance: str):
    """The render's store in this process; ``url`` is its URL or its ``storage.Location`` (which
    carries the storage options the driver opened it with)."""
    from storage import RenderStore

    return RenderStore.cached(url, instance)


def _receipt(kind: str, name: str, t0: float, **extra: Any) -> dict[str, Any]:
    return {
        "task": kind,
        "name": name,
        "worker": worker_name(),
        "seconds": time.perf_counter() - t0,
        "finished": time.time(),
        **extra,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_model(x: np.ndarray, device) -> torch.Tensor:
    """Stored ``(F, C, h, w)`` -> model layout ``(1, C, F, h, w)`` float32."""
    return transfer.to_device(x, device).permute(1, 0, 2, 3)[None]


def _to_store(x: torch.Tensor, dtype: str) -> np.ndarray:
    """Model layout ``(1, C, F, h, w)`` -> stored ``(F, C, h, w)`` on the host; a value beyond
    float16's range (65504) raises instead of being stored as infinity. For a stage's inputs;
    a stepped tile's arrays go through ``_host_outputs``."""
    stored = _store_layout(x, getattr(torch, dtype))
    if bool(_overflow(x, stored)):
        raise NonFiniteError(FLOAT16_OVERFLOW)
    return stored.cpu().numpy()


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
    pos, neg = backend.encode_prompt(plan.spec.prompt, plan.spec.negative_prompt, **prompt_options(plan))
    store.write_prompt_embeds(neg.numpy(), pos.numpy())
    store.mark_task_done("prompt")
    # the text encoder is not needed again until the next render's prompt: off the card meanwhile
    parked = not config.get("worker.keep-text-encoder") and backend.park("text")
    return _receipt("prompt", "prompt", t0, parked_text_encoder=parked)


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


def warm_worker(plan: RenderPlan, url: str, instance: str, *deps) -> dict:
    """Load the denoiser on this worker now, and run one forward at the first stage's tile shape
    (the first call on a card pays for kernel selection and lazy CUDA set-up: 3.5 s measured on
    an H200), while the prompt is encoded, not when the sketch or stage 2 first reaches it."""
    t0 = time.perf_counter()
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    backend.load_transformer()
    st = plan.stages[0]
    g = st.grid
    x = torch.zeros(1, st.channels, st.latent_frames, g.tile_h, g.tile_w, device=backend.device)
    emb = torch.zeros(1, plan.model.text_tokens, plan.model.text_embed_dim, device=backend.device)
    image = (
        blank_condition(plan.model, st.latent_frames, g.tile_h, g.tile_w, backend.device)
        if plan.spec.image
        else None
    )
    with worker_models.device_turn():
        backend.predict(x, torch.full((1,), float(st.timesteps[0]), device=backend.device), emb, image=image)
        _sync(backend.device)
    return _receipt("warm", "warm", t0, gpu=worker_models.gpu_identity())


def upscale_sketch(plan: RenderPlan, url: str, instance: str, *deps) -> dict:
    """Decode the finished sketch to pixels (the refinement tiles upscale and encode their own
    windows of it: ``encode_start``)."""
    t0 = time.perf_counter()
    store = _store(url, instance)
    if store.task_is_done("upscale"):
        return _receipt("upscale", "upscale", t0, skipped=True)
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    sk = plan.sketch
    z = _to_model(store.read_canvas("sketch", "latents", sk.last), backend.device)
    store.write_sketch_pixels(_to_uint8(backend.vae_decode(z)))
    store.mark_task_done("upscale")
    return _receipt("upscale", "upscale", t0)


def encode_start(plan: RenderPlan, url: str, instance: str, row: int, col: int, *deps) -> dict:
    """One refinement tile's start: its window of the bicubically upscaled (and padded) sketch,
    VAE-encoded with ``plan.upscale_margin`` cells of context, re-noised to the first refinement
    step and written as the tile's ``start`` chunk (and ``anchor``, when anchoring)."""
    t0 = time.perf_counter()
    task = f"start_{row}_{col}"
    store = _store(url, instance)
    if store.task_is_done(task):
        return _receipt("start", task, t0, skipped=True)
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    rf = plan.refine
    g, f, m = rf.grid, plan.model.spatial_factor, plan.upscale_margin
    key = TileKey("refine", rf.first, row, col)
    y0, x0 = rf.origin(key)
    ylo, yhi = context_window(y0, g.tile_h, m, g.canvas_h)
    xlo, xhi = context_window(x0, g.tile_w, m, g.canvas_w)
    pixels = upscale_window(
        store.read_sketch_pixels(),
        (plan.spec.height, plan.spec.width),
        (g.canvas_h * f, g.canvas_w * f),
        (ylo * f, yhi * f),
        (xlo * f, xhi * f),
        device=backend.device,
    )
    z = backend.vae_encode(pixels)  # (1, C, F, yhi - ylo, xhi - xlo)
    expected = (rf.latent_frames, yhi - ylo, xhi - xlo)
    if tuple(z.shape[2:]) != expected:
        raise RuntimeError(f"VAE encode gave latents {tuple(z.shape)}, expected (*, *, {expected})")
    z = z[..., y0 - ylo : y0 - ylo + g.tile_h, x0 - xlo : x0 - xlo + g.tile_w].float()
    noise = position_noise(
        plan.spec.seed, "refine", rf.latent_frames, rf.channels, y0, x0, g.tile_h, g.tile_w
    )
    start = renoise(plan.scheduler, rf.first, z, noise.permute(1, 0, 2, 3)[None].to(z.device))
    store.write_tile("refine", "start", None, row, col, _to_store(start, plan.spec.output.store_dtype))
    if plan.anchored:
        store.write_tile("refine", "anchor", None, row, col, _to_store(z, "float32"))
    store.mark_task_done(task)
    return _receipt("start", task, t0)


# -- the tile tasks -------------------------------------------------------------------------------
def _tile_input(store, plan: RenderPlan, key: TileKey, device, with_state: bool = True, origin=None):
    """The sample a tile step starts from (anchored if the plan says so) and the scheduler as it
    stands before the step, with the region's history loaded when ``with_state``; ``origin`` reads
    another window than the key's own (the seam pass)."""
    st = plan.stage(key.stage)
    g = st.grid
    y0, x0 = st.origin(key) if origin is None else origin
    first = key.step == st.first
    prev = None if first else key.step - 1
    own = (key.row, key.col)  # the one chunk of each array this task checks (store.read_region)
    x = store.read_region(
        key.stage, "start" if first else "latents", prev, y0, x0, g.tile_h, g.tile_w, verify=own
    )
    region = RegionStep(plan.scheduler, st.first, key.step)
    if with_state:
        state = {}
        for sname, slots in region.present().items():
            if slots:
                arr = store.read_region(
                    key.stage, f"state_{sname}", prev, y0, x0, g.tile_h, g.tile_w, verify=own
                )
                state[sname] = {s: _to_model(arr[s], device) for s in slots}
        region.load(state)
    sample = _to_model(x, device)
    weight = plan.anchor_weight(key.step) if key.stage == "refine" else 0.0
    if weight > 0:
        # sketch anchoring: pull the tile toward the upscaled sketch re-noised to this step
        clean = store.read_region("refine", "anchor", None, y0, x0, g.tile_h, g.tile_w, verify=own)
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
        eps = transfer.to_device(eps.permute(1, 0, 2, 3)[None], device, dtype=None)
        anchor = renoise(plan.scheduler, key.step, clean, eps)
        sample = (1 - weight) * sample + weight * anchor
    return sample, region


FLOAT16_OVERFLOW = "latents or scheduler history beyond float16's range (65504): store in float32 (output.store_dtype: float32)"


def _store_layout(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Model layout ``(1, C, F, h, w)`` -> stored ``(F, C, h, w)`` in ``dtype``, where ``x`` is."""
    return x[0].permute(1, 0, 2, 3).float().to(dtype)


def _host_outputs(
    plan: RenderPlan, key: TileKey, new, new_state, chunks: dict | None = None
) -> transfer.HostCopy:
    """A stepped tile's arrays as the store takes them, by array name: any other ``chunks``
    (model layout with leading axes), the scheduler history, then the latents; laid out and cast
    where they were computed and queued to the host with the checks of what may be stored
    (``_landed`` reads them). Called inside the task's device turn (``worker_models.device_turn``):
    nothing here waits for the card."""
    st = plan.stage(key.stage)
    g = st.grid
    dtype = getattr(torch, plan.spec.output.store_dtype)
    out, overflow = {}, []
    for aname, value in (chunks or {}).items():
        out[aname] = value[:, 0].permute(0, 2, 1, 3, 4).float()  # (n, F, C, h, w)
    slots = plan.state_slots
    for sname, values in new_state.items():
        shape = (slots[sname], st.latent_frames, st.channels, g.tile_h, g.tile_w)
        arr = torch.full(shape, math.nan, dtype=dtype, device=new.device)
        for s, v in values.items():
            arr[s] = stored = _store_layout(v, dtype)
            overflow.append(_overflow(v, stored))
        out[f"state_{sname}"] = arr
    out["latents"] = stored = _store_layout(new, dtype)
    overflow.append(_overflow(new, stored))
    checks = {
        "finite": finite_flags(new, plan.spec.output.store_dtype),
        "overflow": torch.stack(overflow).any(),
    }
    return transfer.HostCopy(out, checks)


def _overflow(value: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Whether a finite ``value`` became infinite in the store's dtype (float16 beyond 65504)."""
    return torch.isinf(stored).any() & torch.isfinite(value).all()


def _landed(plan: RenderPlan, key: TileKey, copy: transfer.HostCopy) -> dict[str, np.ndarray]:
    """Wait for ``_host_outputs``' copies; raise ``NonFiniteError`` (nothing written) for latents
    that are not finite, or a value float16 storage would turn into infinity."""
    arrays, checks = copy.wait()
    raise_unless_finite(checks["finite"], key, plan.spec.guidance_scale, plan.spec.dtype)
    if checks["overflow"]:
        raise NonFiniteError(FLOAT16_OVERFLOW)
    return arrays


def _finish_tile(store, plan: RenderPlan, key: TileKey, outputs: dict, stats: dict) -> tuple[float, dict]:
    """Write a stepped tile's host ``outputs`` (``_host_outputs``), then its done marker (last)."""
    t_write0 = time.perf_counter()
    for aname, data in outputs.items():
        store.write_tile(key.stage, aname, key.step, key.row, key.col, data)
    stats["write_seconds"] = time.perf_counter() - t_write0
    stats["seconds"] = time.perf_counter() - stats.pop("t0")
    worker, gpu = worker_name(), worker_models.gpu_identity()
    store.mark_done(
        key.stage,
        key.step,
        key.row,
        key.col,
        {**stats, "worker": worker_code(worker), "gpu": worker_code(gpu)},
    )
    stats.pop("session", None)
    stats.pop("computed", None)
    return stats["seconds"], {"worker": worker, "gpu": gpu, "finished": time.time(), **stats}


def predict_guided(
    backend, plan: RenderPlan, model_in, t, embeds, offset, step: int, image=None
) -> torch.Tensor:
    """The guided prediction of one tile at schedule step ``step`` (pure: model in, prediction
    out). ``embeds`` is ``(negative, positive)``; with guidance both run as one batch of two;
    ``image`` is the tile's image condition (image-to-video), or None."""
    neg, pos = embeds
    if plan.cfg:
        out = backend.predict(
            torch.cat([model_in, model_in]), t.expand(2), torch.stack([neg, pos]), offset, image=image
        )
        uncond, cond = out.chunk(2)
        return guided(uncond, cond, plan.guidance(step))
    return backend.predict(model_in, t.expand(1), pos[None], offset, image=image)


def _step_tile(plan: RenderPlan, key: TileKey, region, sample, noise_pred, image, cached: bool):
    """Step a tile's region with its prediction and queue the results to the host:
    ``(HostCopy, prediction)``, the prediction as float32 when the cache records it."""
    new, new_state = region.step(noise_pred.float(), sample)
    new = image.freeze(new) if image is not None else new  # cells an image condition fixes
    extra_chunks = {}
    if cached:
        # only written here: the next step's decision (a CPU task) reads it and measures the gain,
        # so a model call pays no cache reads
        noise_pred = noise_pred.float()
        extra_chunks["cache"] = torch.stack([sample, sample, noise_pred])
    return _host_outputs(plan, key, new, new_state, extra_chunks), noise_pred


def denoise_tile(
    plan: RenderPlan,
    url: str,
    instance: str,
    key: TileKey,
    session: int,
    *deps,
    decision: dict | None = None,
) -> dict:
    """One denoising step of one tile: read the tile's window of the previous step (and the
    scheduler history of that region), predict with classifier-free guidance, update the region
    with the scheduler, write the tile's chunks, mark it done. With the residual cache on, also
    record what the cache needs (``decision``: what ``cache_step`` decided, when it decided)."""
    t0, started = time.perf_counter(), time.time()
    store = _store(url, instance)
    name = f"{key.stage}/{key.step}/{key.row}/{key.col}"
    if store.is_done(key.stage, key.step, key.row, key.col):
        return _receipt("denoise", name, t0, skipped=True)
    st = plan.stage(key.stage)
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    backend.load_transformer()
    device = backend.device
    cached = _caching(plan, key)
    t_read0 = time.perf_counter()
    sample, region = _tile_input(store, plan, key, device)
    embeds = worker_models.prompt_embeds(store, device)
    image = tile_image(store, plan, key, device, batch=2 if plan.cfg else 1)
    t_read = time.perf_counter() - t_read0

    step_in_turn = bool(config.get("worker.step-in-turn", True))
    with worker_models.device_turn() as waited:
        turn_started, t_fwd0 = time.time(), time.perf_counter()
        model_in = region.scale_model_input(sample)
        t = transfer.to_device(region.timestep, device, dtype=None)
        noise_pred = predict_guided(backend, plan, model_in, t, embeds, st.origin(key), key.step, image)
        if step_in_turn:
            copy, noise_pred = _step_tile(plan, key, region, sample, noise_pred, image, cached)
        t_turn = time.perf_counter() - t_fwd0
    if not step_in_turn:  # queued after the next turn's model call (``supergen.worker.step-in-turn``)
        copy, noise_pred = _step_tile(plan, key, region, sample, noise_pred, image, cached)
    outputs = _landed(plan, key, copy)  # the card goes on with the next turn's kernels meanwhile
    t_fwd = time.perf_counter() - t_fwd0
    cache_stats = {}
    if cached:  # the cache record's reduction, after the turn (it reads a value back)
        k = (decision or {}).get("k", math.nan)
        cache_stats = _cache_stats(decision, k=k, acc=0.0, skips=0, pred=noise_pred)
    stats = {"t0": t0, "started": started, "read_seconds": t_read}
    stats.update(wait_seconds=waited, turn_started=turn_started, turn_seconds=t_turn)
    stats.update(forward_seconds=t_fwd, session=session, computed=1, **cache_stats)
    seconds, extra = _finish_tile(store, plan, key, outputs, stats)
    return {"task": "denoise", "name": name, **extra, "seconds": seconds}


# -- the residual cache ---------------------------------------------------------------------------
def _caching(plan: RenderPlan, key: TileKey) -> bool:
    return plan.cache is not None and key.stage == "refine"


def _cache_window(store, plan: RenderPlan, key: TileKey, device, back: int = 1):
    """The cache of the step ``back`` steps before ``key``'s at this tile's window:
    ``(x, x_computed, o_computed)`` in model layout, or ``None`` before the stage's first step."""
    st = plan.stage(key.stage)
    if key.step - back < st.first:
        return None
    g = st.grid
    y0, x0 = st.origin(key)
    arr = store.read_region(
        key.stage, "cache", key.step - back, y0, x0, g.tile_h, g.tile_w, verify=(key.row, key.col)
    )
    return tuple(_to_model(arr[i], device) for i in range(len(region_cache.CACHE_FIELDS)))


def _cache_stats(decision: dict | None, *, k: float, acc: float, skips: int, pred) -> dict:
    d = decision or {}
    return {
        "cache_k": k,
        "cache_change": d.get("change", math.nan),
        "cache_acc": acc,
        "cache_tau": d.get("tau", math.nan),
        "cache_skips": skips,
        "pred_mean": region_cache.mean_abs(pred),
    }


def _decide(store, plan: RenderPlan, key: TileKey, sample, previous) -> region_cache.Decision:
    """The cache's decision for a tile step from the previous step's record and cache."""
    st = plan.stage(key.stage)
    policy, n = plan.cache, len(st.steps)
    index = key.step - st.first
    rec = store.tile_record(key.stage, key.step - 1, key.row, key.col)
    k = rec.get("cache_k", math.nan)
    if rec.get("computed") == 1:
        # the previous step ran the model: the gain between it and the region's compute before
        older = _cache_window(store, plan, key, "cpu", back=2)
        if older is not None:
            fresh = region_cache.gain(previous[2], older[2], previous[1], older[1])
            k = fresh if math.isfinite(fresh) else k  # an input that did not move: keep the last
    state = region_cache.TileCacheState(
        k=k,
        acc=rec.get("cache_acc", 0.0) if math.isfinite(rec.get("cache_acc", math.nan)) else 0.0,
        skips=int(rec.get("cache_skips", 0) or 0) if math.isfinite(rec.get("cache_skips", math.nan)) else 0,
    )
    j = region_cache.scale_index(policy, n, index)
    scale = 1.0 if j is None else store.read_cache_scale(key.stage, j, key.row, key.col)
    x_prev, _, o_computed = previous
    return region_cache.decide(
        policy,
        index,
        n,
        state,
        region_cache.mean_abs(sample - x_prev),
        region_cache.mean_abs(o_computed),
        policy.threshold * scale,
    )


def cache_step(
    plan: RenderPlan, url: str, instance: str, key: TileKey, session: int, run: str, priority: int, *deps
) -> dict:
    """A refinement tile step under the residual cache (a CPU task, holding no GPU): decide from
    the region's history whether the model must run. A hit reuses the region's last computed
    residual at the tile's current window and steps the scheduler here; a miss submits the tile's
    ``denoise_tile`` as a GPU task and waits for it outside the worker's thread pool, so the GPUs
    only ever hold tiles that run the model and Dask balances those over them."""
    t0, started = time.perf_counter(), time.time()
    store = _store(url, instance)
    name = f"{key.stage}/{key.step}/{key.row}/{key.col}"
    if store.is_done(key.stage, key.step, key.row, key.col):
        return _receipt("hit", name, t0, skipped=True)
    sample, region = _tile_input(store, plan, key, "cpu")
    previous = _cache_window(store, plan, key, "cpu")
    decision = _decide(store, plan, key, sample, previous)
    t_read = time.perf_counter() - t0
    if decision.compute:
        info = {"change": decision.change, "tau": decision.tau, "k": decision.k}
        return _run_on_gpu(
            denoise_tile, key, (plan, url, instance, key, session), run=run, priority=priority, decision=info
        )
    x_prev, x_computed, o_computed = previous
    t_step0 = time.perf_counter()
    noise_pred = region_cache.reuse(sample, x_computed, o_computed)
    new, new_state = region.step(noise_pred, sample)
    image = tile_image(store, plan, key, "cpu")
    new = image.freeze(new) if image is not None else new  # cells an image condition fixes
    chunks = {"cache": torch.stack([sample, x_computed, o_computed])}
    outputs = _landed(plan, key, _host_outputs(plan, key, new, new_state, chunks))
    stats = {"t0": t0, "started": started, "read_seconds": t_read}
    stats.update(forward_seconds=time.perf_counter() - t_step0, session=session, computed=0)
    stats.update(
        _cache_stats(
            {"change": decision.change, "tau": decision.tau},
            k=decision.k,
            acc=decision.acc,
            skips=decision.skips,
            pred=noise_pred,
        )
    )
    seconds, extra = _finish_tile(store, plan, key, outputs, stats)
    return {"task": "hit", "name": name, **extra, "seconds": seconds}


def _run_on_gpu(fn, key: TileKey, args: tuple, *, run: str, priority: int, **kwargs) -> dict:
    """Submit ``fn(*args)`` for tile ``key`` from inside a task as a task holding a ``GPU`` slot,
    and wait for it with this thread handed back to the worker (Dask's tasks-from-tasks)."""
    import uuid

    from distributed import get_client, rejoin, secede

    client = get_client()
    fut = client.submit(
        fn,
        *args,
        key=key.task_key(run, "denoise", uuid.uuid4().int & 0xFFFFFFFF),
        resources={"GPU": 1},
        priority=priority,
        pure=False,
        **kwargs,
    )
    secede()
    try:
        return fut.result()
    finally:
        rejoin()


def rank_cache_tiles(plan: RenderPlan, url: str, instance: str, update: int, *deps) -> dict:
    """Rank the refinement tiles by the variability of their mean |prediction| over the steps so
    far and write the region-aware threshold multipliers of ranking ``update``."""
    t0 = time.perf_counter()
    task = f"cache_rank_{update}"
    store = _store(url, instance)
    if store.task_is_done(task):
        return _receipt("rank", task, t0, skipped=True)
    q = plan.cache_updates()[update]
    means = store.tile_stats("refine")["pred_mean"][: q + 1]
    if not np.isfinite(means).all():
        raise RuntimeError(f"{task}: refinement steps 0..{q} are not all recorded")
    policy = plan.cache
    store.write_cache_scale(
        "refine", update, region_cache.region_scales(means, policy.alpha, policy.direction)
    )
    store.mark_task_done(task)
    return _receipt("rank", task, t0)


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def _combined_step(store, plan: RenderPlan, key: TileKey, session: int, t0: float, started: float):
    """Step ``key`` from its two stored branch outputs (guidance, then the scheduler), on the CPU:
    element-wise and small, and the same bytes whichever worker computes it. Returns the new
    latents, the new scheduler history and the tile's stats (not yet written)."""
    st = plan.stage(key.stage)
    g = st.grid
    y0, x0 = st.origin(key)
    t_read0 = time.perf_counter()
    sample, region = _tile_input(store, plan, key, "cpu")
    uncond, cond = (
        _to_model(
            store.read_region(key.stage, "prediction", key.step, y0, x0, g.tile_h, g.tile_w, sub=(b,)), "cpu"
        )
        for b in (0, 1)
    )
    t_read = time.perf_counter() - t_read0
    t_step0 = time.perf_counter()
    new, new_state = region.step(guided(uncond, cond, plan.guidance(key.step)), sample)
    image = tile_image(store, plan, key, "cpu")
    new = image.freeze(new) if image is not None else new  # cells an image condition fixes
    check_finite(new, key, plan.spec.guidance_scale, plan.spec.dtype, plan.spec.output.store_dtype)
    stats = {"t0": t0, "started": started, "read_seconds": t_read}
    stats.update(forward_seconds=time.perf_counter() - t_step0, session=session, computed=1)
    return new, new_state, stats


def predict_branch(
    plan: RenderPlan, url: str, instance: str, key: TileKey, branch: int, session: int, *deps
) -> dict:
    """One guidance branch (0: negative prompt, 1: prompt) of one tile step, written to the tile's
    ``prediction`` chunk of that branch. The two branches of a step run as separate tasks, on
    different GPUs when there are several.

    The previous step is finished here rather than in a task of its own (a task hop and a store
    round trip per step would be on the critical path): both branches compute it from its stored
    branch outputs, identically, and branch 0 alone writes it and marks it done, while its GPU
    runs this step's forward. Only for unshifted stages, where a step's tile is its own window.
    """
    t0, started = time.perf_counter(), time.time()
    store = _store(url, instance)
    name = f"{key.stage}/{key.step}/{key.row}/{key.col}/{'cond' if branch else 'uncond'}"
    if store.is_done(key.stage, key.step, key.row, key.col):
        return _receipt("predict", name, t0, skipped=True)
    st = plan.stage(key.stage)
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    backend.load_transformer()
    device = backend.device
    prev = TileKey(key.stage, key.step - 1, key.row, key.col)
    pending = None
    if key.step == st.first or store.is_done(prev.stage, prev.step, prev.row, prev.col):
        sample, region = _tile_input(store, plan, key, device, with_state=False)
    else:
        new, new_state, stats = _combined_step(store, plan, prev, session, t0, started)
        # what the next step reads is the stored value: round through the store's dtype
        sample = _to_model(_to_store(new, plan.spec.output.store_dtype), device)
        region = RegionStep(plan.scheduler, st.first, key.step)
        if branch == 0:
            pending = (new, new_state, stats)
    embeds = worker_models.prompt_embeds(store, device)[branch]
    image = tile_image(store, plan, key, device)
    finished = {}
    with worker_models.device_turn() as waited:
        turn_started, t_fwd0 = time.time(), time.perf_counter()
        model_in = region.scale_model_input(sample)
        t = transfer.to_device(region.timestep, device, dtype=None).expand(1)
        out = backend.predict(model_in, t, embeds[None], st.origin(key), image=image)
        if pending is not None:  # written while the GPU computes (kernels run asynchronously)
            prev_new, prev_state, prev_stats = pending
            prev_out = _landed(plan, prev, _host_outputs(plan, prev, prev_new, prev_state))  # on the CPU
            _finish_tile(store, plan, prev, prev_out, prev_stats)
            finished = {"finished_step": f"{prev.stage}/{prev.step}/{prev.row}/{prev.col}"}
        copy = transfer.HostCopy({"prediction": _store_layout(out, torch.float32)})
        t_turn = time.perf_counter() - t_fwd0
    prediction = copy.wait()[0]["prediction"]
    t_fwd = time.perf_counter() - t_fwd0
    store.write_tile(key.stage, "prediction", key.step, key.row, key.col, prediction, sub=(branch,))
    return _receipt(
        "predict",
        name,
        t0,
        started=started,
        forward_seconds=t_fwd,
        wait_seconds=waited,
        turn_started=turn_started,
        turn_seconds=t_turn,
        gpu=worker_models.gpu_identity(),
        **finished,
    )


def combine_branches(plan: RenderPlan, url: str, instance: str, key: TileKey, session: int, *deps) -> dict:
    """Finish the last step of a stage whose guidance branches run as separate tasks (earlier
    steps are finished by the next step's ``predict_branch``)."""
    t0, started = time.perf_counter(), time.time()
    store = _store(url, instance)
    name = f"{key.stage}/{key.step}/{key.row}/{key.col}"
    if store.is_done(key.stage, key.step, key.row, key.col):
        return _receipt("denoise", name, t0, skipped=True)
    new, new_state, stats = _combined_step(store, plan, key, session, t0, started)
    outputs = _landed(plan, key, _host_outputs(plan, key, new, new_state))
    seconds, extra = _finish_tile(store, plan, key, outputs, stats)
    return {"task": "denoise", "name": name, **extra, "seconds": seconds}


def seam_inputs(store, plan: RenderPlan, key: TileKey, device):
    """What window ``key`` of the seam pass reads: the last refinement step's input there with the
    scheduler as it stood before that step (``_tile_input``), the step's own result, and the
    window's image condition (``None`` for text-to-video)."""
    seam, rf = plan.seam, plan.refine
    g = seam.grid
    y0, x0 = seam.origin(key)
    rkey = TileKey("refine", rf.last, key.row, key.col)
    sample, region = _tile_input(store, plan, rkey, device, origin=(y0, x0))
    last = _to_model(store.read_region("refine", "latents", rf.last, y0, x0, g.tile_h, g.tile_w), device)
    image = tile_image(store, plan, rkey, device, batch=2 if plan.cfg else 1, origin=(y0, x0))
    return sample, region, last, image


def seam_window(
    backend, plan: RenderPlan, key: TileKey, embeds, sample, region, last, image=None
) -> torch.Tensor:
    """The seam pass's result in window ``key`` of ``plan.seam`` (``supergen_dask.seam``; pure:
    inputs in, latents out): the last refinement step again on this window, from ``seam_inputs``,
    blended with the step's own result by the pass's weight. ``embeds`` is ``(negative, positive)``;
    ``image`` the window's image condition (image-to-video), whose fixed cells stay fixed."""
    seam = plan.seam
    model_in = region.scale_model_input(sample)
    t = transfer.to_device(region.timestep, backend.device, dtype=None)  # no wait for the card
    noise_pred = predict_guided(backend, plan, model_in, t, embeds, seam.origin(key), seam.step, image)
    new, _ = region.step(noise_pred.float(), sample)
    check_finite(new, key, plan.guidance(seam.step), plan.spec.dtype)
    w = torch.from_numpy(seam.weight(key)).to(backend.device)
    out = w * new + (1 - w) * last.to(new.dtype)
    return image.freeze(out) if image is not None else out  # cells an image condition fixes


def seam_tile(plan: RenderPlan, url: str, instance: str, key: TileKey, session: int, *deps) -> dict:
    """One window of the seam pass (``seam_window``), written as the window's chunk of the final
    latents."""
    t0, started = time.perf_counter(), time.time()
    store = _store(url, instance)
    name = f"{key.stage}/{key.step}/{key.row}/{key.col}"
    if store.is_done(key.stage, key.step, key.row, key.col):
        return _receipt("seam", name, t0, skipped=True)
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    backend.load_transformer()
    device = backend.device
    t_read0 = time.perf_counter()
    inputs = seam_inputs(store, plan, key, device)
    embeds = worker_models.prompt_embeds(store, device)
    t_read = time.perf_counter() - t_read0
    with worker_models.device_turn() as waited:
        turn_started, t_fwd0 = time.time(), time.perf_counter()
        blended = seam_window(backend, plan, key, embeds, *inputs)
        copy = _host_outputs(plan, key, blended, {})
        t_turn = time.perf_counter() - t_fwd0
    outputs = _landed(plan, key, copy)
    t_fwd = time.perf_counter() - t_fwd0
    stats = {"t0": t0, "started": started, "read_seconds": t_read}
    stats.update(wait_seconds=waited, turn_started=turn_started, turn_seconds=t_turn)
    stats.update(forward_seconds=t_fwd, session=session, computed=1)
    seconds, extra = _finish_tile(store, plan, key, outputs, stats)
    return {"task": "seam", "name": name, **extra, "seconds": seconds}


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
    final = plan.final
    z = _to_model(store.read_region(final.name, "latents", final.last, wy, wx, wh, ww), backend.device)
    store.write_region_pixels(reg, _to_uint8(backend.vae_decode(z)))
    store.mark_task_done(task)
    return _receipt("decode", task, t0)


def encode_segment(plan: RenderPlan, url: str, instance: str, index: int, path, *deps) -> dict:
    """Blend the decoded regions of one run of frames and encode it as its own video segment
    (``path``: a local path, URL or ``storage.Location``; PyAV writes a local file, uploaded
    whole when the render directory is elsewhere)."""
    from storage import as_location
    from storage import encode_segment as encode

    t0 = time.perf_counter()
    task = f"segment_{index}"
    store = _store(url, instance)
    target = as_location(path)
    if store.task_is_done(task) and target.exists():
        return _receipt("encode", task, t0, skipped=True)
    a, b = plan.encode_segments()[index]
    chunk = store.layout.decode.frames_per_chunk

    def frames():
        for s in range(a, b, chunk):
            yield from store.decoded_frames(slice(s, min(b, s + chunk)))

    out = plan.spec.output
    with target.local_target() as local:
        encode(
            frames(),
            local,
            fps=plan.spec.fps,
            codec=out.codec,
            crf=out.crf,
            threads=plan.encode_threads,
            first_frame=a,
        )
    store.mark_task_done(task)
    return _receipt("encode", task, t0, frames=b - a)


def encode_output(plan: RenderPlan, url: str, instance: str, video_path, segments: list, *deps) -> dict:
    """Join the encoded segments into the video without re-encoding, then drop the segments
    (through local copies when the render directory is not local: PyAV reads and writes files)."""
    import contextlib

    from storage import as_location, join_segments

    t0 = time.perf_counter()
    store = _store(url, instance)
    video = as_location(video_path)
    if store.task_is_done("encode") and video.exists():
        return _receipt("encode", "encode", t0, skipped=True, path=str(video))
    segs = [as_location(s) for s in segments]
    with contextlib.ExitStack() as stack:
        local = [stack.enter_context(s.local_copy()) for s in segs]
        with video.local_target() as out:
            info = join_segments(local, out)
    for seg in segs:
        seg.unlink(missing_ok=True)
    store.mark_task_done("encode")
    return _receipt("encode", "encode", t0, path=str(video), frames=info.frames)


def measure_detail_reference(plan: RenderPlan, url: str, instance: str, *deps) -> dict:
    """What the quality record's detail gain divides by (``quality.detail_reference``), measured
    as soon as the sketch is decoded, so that the record itself measures only the finished video."""
    from supergen_dask.quality import detail_reference

    t0 = time.perf_counter()
    energy = detail_reference(plan, _store(url, instance))
    return _receipt("reference", "detail_reference", t0, detail_reference=energy)


def measure_quality(plan: RenderPlan, url: str, instance: str, *deps) -> dict:
    """Quality metrics of the finished render (seams, duplicates, detail, flicker); the driver
    writes them into the store's attributes. A ``measure_detail_reference`` receipt among
    ``deps`` saves measuring the detail reference here."""
    from supergen_dask.quality import render_quality

    t0 = time.perf_counter()
    store = _store(url, instance)
    reference = next(
        (d["detail_reference"] for d in deps if isinstance(d, dict) and "detail_reference" in d), None
    )
    return _receipt("quality", "quality", t0, quality=render_quality(plan, store, reference_energy=reference))


def sketch_preview(plan: RenderPlan, url: str, instance: str, path, *deps) -> dict:
    """The decoded sketch as a clip (``sketch.mp4`` beside the video), as soon as stage 1 ends."""
    from storage import as_location
    from supergen_dask.preview import write_clip

    t0 = time.perf_counter()
    target = as_location(path)
    if target.exists():
        return _receipt("preview", "sketch_preview", t0, skipped=True)
    info = write_clip(_store(url, instance).read_sketch_pixels(), target, fps=plan.spec.fps)
    return _receipt("preview", "sketch_preview", t0, path=str(target), frames=info.frames)
