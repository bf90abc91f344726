"""Checks every model family runs: the renderer's one-tile native render against the family's own
diffusers pipeline, and a tiled render against the same method written on the whole canvas."""

from __future__ import annotations

import numpy as np
import torch
from conftest import tiny_spec

import supergen_dask as sd
from storage import RenderStore
from supergen_dask import worker_models
from supergen_dask.geometry import TileKey

# exact comparisons need what was computed, every step of it: float32, nothing freed
EXACT_STORAGE = sd.OutputSettings(store_dtype="float32", keep_every=1, keep_history=True)


def native_spec(model_dir, *, steps: int, guidance: float, frames: int, size: tuple[int, int], **kw):
    """One tile at the model's native size, k = T (no sketch), no shifting: the model's own path
    (stored in float32, every step kept, for exact comparisons)."""
    kw.setdefault("output", EXACT_STORAGE)
    return tiny_spec(
        model=str(model_dir),
        height=size[0],
        width=size[1],
        num_frames=frames,
        num_inference_steps=steps,
        refine_steps=steps,
        guidance_scale=guidance,
        shift=sd.ShiftSettings(enabled=False),
        **kw,
    )


def stored_steps(result) -> tuple[np.ndarray, list[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``(start, [latents after each step], (neg, pos) embeds)`` of a render's refine stage, in the
    stored ``(F, C, h, w)`` layout."""
    store = RenderStore.open(str(result.store_path), mode="r")
    plan = result.plan
    start = store.read_canvas("refine", "start", None)
    steps = [store.read_canvas("refine", "latents", s) for s in plan.refine.steps]
    return start, steps, store.read_prompt_embeds()


def collect_steps(pipe, **call) -> list[torch.Tensor]:
    """Run a diffusers pipeline, returning its latents after every step."""
    seen: list[torch.Tensor] = []

    def keep(_pipe, _i, _t, kwargs):
        seen.append(kwargs["latents"].detach().clone().float())
        return {}

    pipe(
        callback_on_step_end=keep,
        callback_on_step_end_tensor_inputs=["latents"],
        output_type="latent",
        **call,
    )
    return seen


def assert_steps_close(ours: list[np.ndarray], theirs: list[torch.Tensor], atol: float = 1e-5) -> float:
    """Step-by-step comparison; returns the largest difference seen."""
    assert len(ours) == len(theirs)
    worst = 0.0
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        b = b.numpy()
        assert a.shape == b.shape, f"step {i}: {a.shape} vs {b.shape}"
        diff = float(np.abs(a - b).max())
        worst = max(worst, diff)
        assert diff <= atol * max(1.0, float(np.abs(b).max())), f"step {i} differs by {diff}"
    return worst


def full_canvas_reference(result) -> list[torch.Tensor]:
    """The refine stage written the plain way: every step, predict each tile of the shifted grid
    with its canvas offset, fuse the predictions on the canvas, take ONE scheduler step."""
    plan = result.plan
    store = RenderStore.open(str(result.store_path), mode="r")
    st = plan.refine
    g = st.grid
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    neg, pos = (torch.from_numpy(a) for a in store.read_prompt_embeds())
    x = torch.from_numpy(store.read_canvas("refine", "start", None)).permute(1, 0, 2, 3)[None]
    sched = plan.scheduler.build()
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(st.first)
    outs = []
    for step in st.steps:
        t = sched.timesteps[step]
        model_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        oy, ox = st.offset(step)
        rolled_in = torch.roll(model_in, (-oy, -ox), (-2, -1))
        rolled_pred = torch.empty_like(x)
        for r, c in g.tiles():
            sl = (..., slice(r * g.tile_h, (r + 1) * g.tile_h), slice(c * g.tile_w, (c + 1) * g.tile_w))
            tile = rolled_in[sl]
            origin = st.origin(TileKey("refine", step, r, c))
            if plan.cfg:
                out = backend.predict(torch.cat([tile, tile]), t.expand(2), torch.stack([neg, pos]), origin)
                u, cnd = out.chunk(2)
                rolled_pred[sl] = u + plan.spec.guidance_scale * (cnd - u)
            else:
                rolled_pred[sl] = backend.predict(tile, t.expand(1), pos[None], origin)
        fused = torch.roll(rolled_pred, (oy, ox), (-2, -1))
        x = sched.step(fused, t, x, return_dict=False)[0]
        outs.append(x.clone())
    return outs


def assert_tiled_render_matches_reference(result) -> None:
    store = RenderStore.open(str(result.store_path), mode="r")
    ref = full_canvas_reference(result)
    for step, expected in zip(result.plan.refine.steps, ref, strict=True):
        got = torch.from_numpy(store.read_canvas("refine", "latents", step)).permute(1, 0, 2, 3)[None]
        assert torch.equal(got, expected), f"refine step {step} differs from the full-canvas reference"


def small_margins():
    """2 cells of VAE context for the upscale encodes and decode regions (8 by default, which at
    these sizes makes every region decode the whole canvas): the VAE's context is a quality
    setting the tiled tests do not check, and these renders spend most of their time in the VAE."""
    import dask.config

    return dask.config.set({"supergen.decode.margin": 2, "supergen.upscale.margin": 2})
