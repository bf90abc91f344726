"""CogVideoX 1.5 behind the protocol: loading, positions in tiles, the pipeline oracle, tiled renders."""

from __future__ import annotations

import pytest
import torch
from family_checks import (
    assert_steps_close,
    assert_tiled_render_matches_reference,
    collect_steps,
    native_spec,
    small_margins,
    stored_steps,
)

import supergen_dask as sd
from pipelines import load_backend, model_info
from pipelines.cogvideox import rotary_tables, save_tiny_pipeline
from storage import probe_video
from supergen_dask.spec import SpecError


@pytest.fixture(scope="module")
def cog_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-cogvideox")


def test_directory_is_detected_with_its_rules(cog_dir):
    info = model_info(str(cog_dir))
    assert info.family == "cogvideox" and info.scheduler_class == "CogVideoXDDIMScheduler"
    assert info.scheduler_config["prediction_type"] == "v_prediction"
    assert (info.native_height, info.native_width, info.text_tokens, info.text_embed_dim) == (64, 64, 16, 32)
    # temporal patch 2 + the pipeline's one padding frame: odd VAE latent counts only
    assert [n for n in range(1, 40) if info.frames_ok(n)] == [1, 9, 17, 25, 33]
    assert info.latent_frames(9) == 4 and info.pixel_frames(4) == 9
    with pytest.raises(SpecError, match="num_frames"):
        sd.plan_render(sd.RenderSpec(prompt="a", model=str(cog_dir), num_frames=13))


@torch.no_grad()
def test_canvas_offset_changes_a_tile_and_offset_zero_is_the_pipelines_rotary(cog_dir):
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(str(cog_dir))
    cos, sin = pipe._prepare_rotary_positional_embeddings(64, 64, 4, torch.device("cpu"))
    mine = rotary_tables(16, 2, 4, 4)
    assert torch.equal(mine[0], cos) and torch.equal(mine[1], sin)

    # float64, so round-off cannot hide or fake an effect: rotary positions start at (3, 5) patches
    model = pipe.transformer.double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 8, 8, generator=g, dtype=torch.float64)
    text = torch.randn(1, 16, 32, generator=g, dtype=torch.float64)

    def run(offset):
        rope = tuple(r.double() for r in rotary_tables(16, 2, 4, 4, offset))
        return model(
            hidden_states=x,
            encoder_hidden_states=text,
            timestep=torch.tensor([500]),
            image_rotary_emb=rope,
            return_dict=False,
        )[0]

    base = run((0, 0))
    moved = (run((3, 5)) - base).abs().max() / base.abs().max()
    # rotary rotates only video tokens while text and video share one attention: the text-video
    # angle depends on absolute position, so unlike Wan (3.5e-7) the offset changes the output
    assert moved > 1e-3, float(moved)


def test_one_native_tile_equals_the_diffusers_pipeline(tmp_path, client, cog_dir):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    spec = native_spec(cog_dir, steps=4, guidance=6.0, frames=9, size=(64, 64))
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    assert result.plan.refine.grid.n_tiles == 1 and result.plan.sketch is None
    start, ours, (neg, pos) = stored_steps(result)

    pipe = CogVideoXPipeline.from_pretrained(str(cog_dir))
    pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config)
    theirs = collect_steps(
        pipe,
        prompt_embeds=torch.from_numpy(pos)[None],
        negative_prompt_embeds=torch.from_numpy(neg)[None],
        latents=torch.from_numpy(start)[None],  # (B, F, C, H, W): the stored layout already
        num_inference_steps=4,
        guidance_scale=6.0,
        height=64,
        width=64,
        num_frames=9,
    )
    assert_steps_close(ours, [t[0] for t in theirs])
    assert probe_video(result.video_path).frames == 9


def test_tiled_render_with_shifts_matches_the_full_canvas_method(tmp_path, client, cog_dir):
    spec = native_spec(cog_dir, steps=4, guidance=6.0, frames=9, size=(128, 128)).replace(
        refine_steps=3, shift=sd.ShiftSettings()
    )
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    plan = result.plan
    assert plan.refine.grid.n_tiles == 4 and plan.sketch is not None and plan.refine.shift.stride_y > 0
    assert_tiled_render_matches_reference(result)
    info = probe_video(result.video_path)
    assert (info.width, info.height, info.frames) == (128, 128, 9)


def test_backend_roundtrip_shapes(cog_dir):
    b = load_backend(str(cog_dir))
    video = b.vae_decode(torch.randn(1, 4, 4, 8, 8))
    assert video.shape == (1, 3, 9, 64, 64)
    z = b.vae_encode(video)
    assert z.shape == (1, 4, 4, 8, 8) and torch.equal(z[:, :, 0], z[:, :, 1])  # padding frame = first


def test_three_x_render_is_bit_identical_on_one_and_three_workers(tmp_path, cog_dir):
    from conftest import assert_renders_identical, local_client

    spec = native_spec(cog_dir, steps=4, guidance=6.0, frames=9, size=(192, 192)).replace(
        refine_steps=3, shift=sd.ShiftSettings()
    )
    with small_margins(), local_client(1) as c1:
        one = sd.render(spec, output_dir=tmp_path / "one", client=c1, progress=False)
    with small_margins(), local_client(3) as c3:
        sd.render(spec, output_dir=tmp_path / "three", client=c3, progress=False)
    assert one.plan.refine.grid.n_tiles == 9
    assert_renders_identical(tmp_path / "one", tmp_path / "three")


def test_tile_positions_setting(tmp_path, cog_dir):
    import json
    import shutil

    local = tmp_path / "tile-positions"
    shutil.copytree(cog_dir, local)
    extra = json.loads((local / "supergen.json").read_text())
    (local / "supergen.json").write_text(json.dumps({**extra, "tile_positions": "tile"}))
    assert model_info(str(local)).revision != model_info(str(cog_dir)).revision  # renders never mix
    x = torch.randn(1, 4, 4, 8, 8)
    t = torch.tensor([500])
    for path, moves in ((cog_dir, True), (local, False)):
        b = load_backend(str(path))
        pos, _ = b.encode_prompt("a red circle", "")
        at0 = b.predict(x, t, pos[None], (0, 0))
        moved = b.predict(x, t, pos[None], (6, 10))
        assert torch.equal(at0, moved) != moves
