"""Seam score at the last refinement grid without and with the seam pass, on toy-grammar prompts.

For each prompt it renders the spec once, with the seam pass, and from that render's store
(which keeps the last refinement step's input and history for the pass) it also rebuilds, with the
same task code (``tasks.seam_inputs`` / ``tasks.seam_window``), the final latents of:

- ``off``: no seam pass (the last refinement step's latents, what a render with ``seam.enabled``
  false decodes; ``--render-off`` renders it too and checks the pixels are the same);
- ``half``: the seam pass shifted by exactly half a tile (the pass before the shift to mid-patch);
- ``untiled``: the last step once more on the whole canvas in one window, from the same input:
  no tile borders in the last step at all, the floor any seam pass can reach from this input.

``on`` is the render itself (checked equal to its rebuild). Each is decoded (the toy's autoencoder
is exact and local, so a whole decode equals the render's decode regions: checked on ``on``) and
scored at the last grid's borders (``last``; ``inner``: inside the frame; ``edge``: within one
latent cell of the frame edge, where the torus wraps), next to the clean procedural video at the
same borders, and at the pass's own borders (``pass``, against ``off`` at the same borders: the
pass must leave no new seam). Writes JSON.

    python scripts/seam_pass_check.py --prompts 8 --scale 4 --out reports/seam-pass-4x-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import dask.config
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines import model_info  # noqa: E402
from pipelines.toy import Scene, evaluation_prompts, render_scene  # noqa: E402
from storage import RenderStore  # noqa: E402
from supergen_dask import tasks, worker_models  # noqa: E402
from supergen_dask.cluster import client_for  # noqa: E402
from supergen_dask.graph import run_render  # noqa: E402
from supergen_dask.metrics import object_mask, seam_profiles  # noqa: E402
from supergen_dask.plan import RenderPlan, plan_render  # noqa: E402
from supergen_dask.quality import counted_colour, seam_pass_grid_lines, step_grid_lines  # noqa: E402
from supergen_dask.spec import CacheSettings, RenderSpec, ShiftSettings  # noqa: E402
from supergen_dask.stepping import RegionStep  # noqa: E402


def _score(profiles, rows, cols) -> float | None:
    if not (len(rows) or len(cols)):
        return None
    s = profiles.score(np.asarray(rows, int), np.asarray(cols, int))
    return float(s) if np.isfinite(s) else None


def border_scores(video: np.ndarray, mask, plan: RenderPlan, passes: dict[str, RenderPlan]) -> dict:
    """Seam scores of ``video`` at the last grid (all its borders, inner ones, those within a
    latent cell of the frame edge) and at each seam pass's own borders (``pass_<name>``)."""
    f = plan.model.spatial_factor
    rows, cols = step_grid_lines(plan, plan.refine.last)
    H, W = video.shape[1:3]
    p = seam_profiles(video, mask)
    edge_r = [x for x in rows if x <= f or x >= H - f]
    edge_c = [x for x in cols if x <= f or x >= W - f]
    out = {
        "last": _score(p, rows, cols),
        "inner": _score(p, [x for x in rows if x not in edge_r], [x for x in cols if x not in edge_c]),
        "edge": _score(p, edge_r, edge_c),
    }
    for name, variant in passes.items():
        out[f"pass_{name}"] = _score(p, *seam_pass_grid_lines(variant))
    return out


def rebuild_pass(store, plan: RenderPlan, backend, embeds) -> np.ndarray:
    """The final latents of ``plan``'s seam pass, ``(F, C, H, W)`` canvas, window by window with
    the task's own code (``tasks.seam_inputs`` / ``tasks.seam_window``)."""
    seam, g = plan.seam, plan.seam.grid
    out = np.zeros((seam.latent_frames, seam.channels, g.canvas_h, g.canvas_w), np.float32)
    dtype = plan.spec.output.store_dtype
    for key in seam.keys():
        inputs = tasks.seam_inputs(store, plan, key, backend.device)
        with torch.no_grad():
            window = tasks.seam_window(backend, plan, key, embeds, *inputs)
        y0, x0 = seam.origin(key)
        ys, xs = np.arange(y0, y0 + g.tile_h) % g.canvas_h, np.arange(x0, x0 + g.tile_w) % g.canvas_w
        out[:, :, ys[:, None], xs[None, :]] = tasks._to_store(window, dtype)  # as the task stores it
    return out


def untiled_last_step(store, plan: RenderPlan, backend, embeds) -> np.ndarray:
    """The last refinement step once more on the whole canvas in one window, from its stored input
    and scheduler history (no anchoring: the script's specs have none)."""
    rf, g = plan.refine, plan.refine.grid
    device = backend.device
    region = RegionStep(plan.scheduler, rf.first, rf.last)
    prev = rf.last - 1
    state = {}
    for sname, slots in region.present().items():
        if slots:
            arr = store.read_region("refine", f"state_{sname}", prev, 0, 0, g.canvas_h, g.canvas_w)
            state[sname] = {s: tasks._to_model(arr[s], device) for s in slots}
    region.load(state)
    sample = tasks._to_model(
        store.read_region("refine", "latents", prev, 0, 0, g.canvas_h, g.canvas_w), device
    )
    model_in = region.scale_model_input(sample)
    with torch.no_grad():
        pred = tasks.predict_guided(
            backend, plan, model_in, region.timestep.to(device), embeds, (0, 0), rf.last
        )
    new, _ = region.step(pred.float(), sample)
    return tasks._to_store(new, plan.spec.output.store_dtype).astype(np.float32)


def decode(backend, plan: RenderPlan, latents: np.ndarray) -> np.ndarray:
    """Whole decode of the valid part of a canvas of latents to uint8 ``(F, H, W, 3)``."""
    g = plan.refine.grid
    z = tasks._to_model(latents[..., : g.valid_h, : g.valid_w], backend.device)
    with torch.no_grad():
        return tasks._to_uint8(backend.vae_decode(z))


def measure(plan: RenderPlan, store, scene, render_off: np.ndarray | None) -> dict:
    """Every variant's scores for one finished render with a seam pass."""
    rf = plan.refine
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    backend.load_transformer()
    embeds = worker_models.prompt_embeds(store, backend.device)
    g = rf.grid
    oy, ox = rf.offset(rf.last)
    half = (
        (oy + g.tile_h // 2) % g.tile_h if g.rows > 1 else oy,
        (ox + g.tile_w // 2) % g.tile_w if g.cols > 1 else ox,
    )
    passes = {"on": plan, "half": dataclasses.replace(plan, seam=dataclasses.replace(plan.seam, offset=half))}
    latents = {
        "off": store.read_canvas("refine", "latents", rf.last).astype(np.float32),
        "half": rebuild_pass(store, passes["half"], backend, embeds),
        "on": rebuild_pass(store, plan, backend, embeds),
        "untiled": untiled_last_step(store, plan, backend, embeds),
    }
    stored = store.read_canvas(plan.seam.name, "latents", plan.seam.step).astype(np.float32)
    if not np.array_equal(latents["on"], stored):
        raise AssertionError("the rebuilt seam pass differs from the render's")
    videos = {name: decode(backend, plan, z) for name, z in latents.items()}
    if not np.array_equal(videos["on"], store.decoded_frames()):
        raise AssertionError("a whole decode differs from the render's decode regions")
    if render_off is not None and not np.array_equal(videos["off"], render_off):
        raise AssertionError("the last step's latents decode differently from the render without a pass")
    colour = counted_colour(plan)
    clean = render_scene(scene, plan.spec.height, plan.spec.width, plan.pixel_frames)
    out = {"clean": border_scores(clean, object_mask(clean, scene.colour_rgb), plan, passes)}
    for name, video in videos.items():
        mask = object_mask(video, colour) if colour is not None else None
        out[name] = border_scores(video, mask, plan, passes)
    return out


def _ratio(a, b):
    return None if a is None or not b else a / b


def summary(rows: list[dict]) -> dict:
    """Per variant, the mean and median over prompts of ``last`` / clean's ``last`` (and inner),
    and of the pass's own-border score over ``off``'s at the same borders."""
    out = {}
    for name in ("off", "half", "on", "untiled"):
        s = {}
        for part in ("last", "inner", "edge"):
            r = [_ratio(row[name][part], row["clean"][part]) for row in rows]
            r = [x for x in r if x is not None]
            if r:
                s[f"{part}_vs_clean_mean"] = statistics.fmean(r)
                s[f"{part}_vs_clean_median"] = statistics.median(r)
        for p in ("on", "half"):
            r = [_ratio(row[name][f"pass_{p}"], row["off"][f"pass_{p}"]) for row in rows]
            r = [x for x in r if x is not None]
            if r:
                s[f"pass_{p}_vs_off_mean"] = statistics.fmean(r)
        out[name] = s
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-wan")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--first", type=int, default=0, help="skip this many of the evaluation prompts")
    ap.add_argument("--scale", type=float, default=4.0, help="output area / native area")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--refine-steps", type=int, default=18)
    ap.add_argument(
        "--shift-order", default="walk", help="walk (the default, the published schedule) or spread"
    )
    ap.add_argument("--cache-threshold", type=float, help="the residual cache's tau (default: the model's)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--render-off", action="store_true", help="also render without the pass (check)")
    ap.add_argument("--root", default="seam-check-renders")
    ap.add_argument("--out", default="seam-pass-check.json")
    a = ap.parse_args(argv)
    info = model_info(a.model)
    f, side = info.spatial_factor, math.sqrt(a.scale)
    h, w = int(round(info.native_height * side / f)) * f, int(round(info.native_width * side / f)) * f
    rows = []
    prompts = evaluation_prompts(a.first + a.prompts, seed=0)[a.first :]
    with client_for(None, n_workers=a.workers, processes=a.workers > 1) as client:
        for i, prompt in enumerate(prompts):
            spec = RenderSpec(
                prompt=prompt,
                model=a.model,
                height=h,
                width=w,
                num_inference_steps=a.steps,
                refine_steps=a.refine_steps,
                seed=0,
                shift=ShiftSettings(order=a.shift_order),
                cache=CacheSettings(threshold=a.cache_threshold),
            )
            with dask.config.set({"supergen.seam.enabled": True}):
                plan = plan_render(spec)
            if plan.seam is None or plan.anchored:
                raise SystemExit("this spec gets no seam pass (one tile, or too few refinement steps)")
            render_off = None
            if a.render_off:
                with dask.config.set({"supergen.seam.enabled": False}):
                    off_plan = plan_render(spec)
                out = Path(a.root) / f"{i:03d}-off"
                shutil.rmtree(out, ignore_errors=True)
                done = run_render(off_plan, out, client, progress=False)
                render_off = RenderStore.open(str(done.store_path), mode="r").decoded_frames()
            out = Path(a.root) / f"{i:03d}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            result = run_render(plan, out, client, progress=False)
            seconds = time.perf_counter() - t0
            store = RenderStore.open(str(result.store_path), mode="r")
            g = plan.refine.grid
            calls = len(plan.refine.steps) * g.n_tiles
            row = {
                "prompt": prompt,
                "size": f"{w}x{h}",
                "grid": f"{g.rows}x{g.cols}",
                "last_offset": list(plan.seam.last_offset),
                "pass_offset": list(plan.seam.offset),
                "tile_calls_refine": calls,
                "tile_calls_pass": plan.seam.grid.n_tiles,
                "extra_compute": plan.seam.grid.n_tiles / calls,
                "seconds": round(seconds, 1),
                "checked_off_render": render_off is not None,
                **measure(plan, store, Scene.from_prompt(prompt, seed=0), render_off),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "settings": {
            "model": a.model,
            "size": f"{w}x{h}",
            "num_inference_steps": a.steps,
            "refine_steps": a.refine_steps,
            "seed": 0,
            "shift_order": a.shift_order,
            "cache_threshold": a.cache_threshold,
            "prompts": a.prompts,
            "first": a.first,
        },
        "summary": summary(rows),
        "renders": rows,
    }
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
