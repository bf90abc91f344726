"""Wan 2.1 and 2.2 (A14B's two experts, TI2V-5B's 16x VAE and per-token timesteps) against the
stock WanPipeline, and tiled renders of the 2.2 variants."""

from __future__ import annotations

import pytest
import torch
from family_checks import (
    assert_steps_close,
    assert_tiled_render_matches_reference,
    collect_steps,
    native_spec,
    stored_steps,
)

import supergen_dask as sd
from pipelines import load_backend, model_info
from pipelines.wan import save_tiny_pipeline
from storage import probe_video

NATIVE = {"2.1": (64, 64), "2.2-a14b": (64, 64), "2.2-ti2v": (128, 128)}


@pytest.fixture(scope="module")
def wan_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {v: save_tiny_pipeline(root / f"wan-{v}", variant=v, native=n) for v, n in NATIVE.items()}


def test_variants_are_read_from_model_index(wan_dirs):
    a14b = load_backend(str(wan_dirs["2.2-a14b"]))
    assert a14b.boundary_timestep == 875.0 and not a14b.expand_timesteps
    assert a14b.expert(torch.tensor([875.0])) is a14b.transformer
    assert a14b.expert(torch.tensor([874.0])) is not a14b.transformer
    ti2v = model_info(str(wan_dirs["2.2-ti2v"]))
    assert (ti2v.spatial_factor, ti2v.latent_channels, ti2v.patch_spatial) == (16, 48, 2)
    assert load_backend(str(wan_dirs["2.2-ti2v"])).expand_timesteps


@pytest.mark.parametrize("variant", list(NATIVE))
def test_one_native_tile_equals_the_diffusers_pipeline(tmp_path, client, wan_dirs, variant):
    from diffusers import WanPipeline

    size = NATIVE[variant]
    steps = 6
    spec = native_spec(wan_dirs[variant], steps=steps, guidance=5.0, frames=9, size=size)
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    assert result.plan.refine.grid.n_tiles == 1 and result.plan.sketch is None
    if variant == "2.2-a14b":  # both experts take part
        ts = result.plan.refine.timesteps
        assert min(ts) < 875 <= max(ts)
    start, ours, (neg, pos) = stored_steps(result)
    pipe = WanPipeline.from_pretrained(str(wan_dirs[variant]))
    theirs = collect_steps(
        pipe,
        prompt_embeds=torch.from_numpy(pos)[None],
        negative_prompt_embeds=torch.from_numpy(neg)[None],
        latents=torch.from_numpy(start).permute(1, 0, 2, 3)[None],
        num_inference_steps=steps,
        guidance_scale=5.0,
        height=size[0],
        width=size[1],
        num_frames=9,
    )
    assert_steps_close(ours, [t[0].permute(1, 0, 2, 3) for t in theirs])


@pytest.mark.parametrize("variant", ["2.2-a14b", "2.2-ti2v"])
def test_tiled_render_with_shifts_matches_the_full_canvas_method(tmp_path, client, wan_dirs, variant):
    h, w = NATIVE[variant]
    spec = native_spec(wan_dirs[variant], steps=6, guidance=5.0, frames=9, size=(2 * h, 2 * w)).replace(
        refine_steps=4, shift=sd.ShiftSettings()
    )
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    plan = result.plan
    assert plan.refine.grid.n_tiles == 4 and plan.sketch is not None and plan.refine.shift.stride_y > 0
    assert_tiled_render_matches_reference(result)
    info = probe_video(result.video_path)
    assert (info.width, info.height, info.frames) == (2 * w, 2 * h, 9)
