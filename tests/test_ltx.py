"""LTX-Video behind the protocol: packed tokens, masked text, positions in tiles, the pipeline
oracle, tiled renders."""

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
from pipelines.base import unpack_text
from pipelines.ltx import pack_latents, save_tiny_pipeline, unpack_latents
from storage import probe_video


@pytest.fixture(scope="module")
def ltx_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-ltx")


def test_directory_is_detected_with_its_rules(ltx_dir):
    info = model_info(str(ltx_dir))
    assert info.family == "ltx" and (info.spatial_factor, info.temporal_factor) == (32, 8)
    assert info.frames_ok(9) and info.frames_ok(161) and not info.frames_ok(13)
    assert info.text_embed_dim == 17  # 16 T5 channels + the attention-mask column
    # the pipeline's sigmas at the native sequence length, from set_timesteps(n) alone
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    from supergen_dask.stepping import SchedulerRef

    theirs = FlowMatchEulerDiscreteScheduler.from_pretrained(str(ltx_dir), subfolder="scheduler")
    c = theirs.config
    mu = calculate_shift(2 * 4 * 4, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    theirs.set_timesteps(sigmas=[1.0 - i * (1 - 1 / 7) / 6 for i in range(7)], mu=mu)
    ours = SchedulerRef.create(info.scheduler_class, info.scheduler_config, 7).build()
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=0, atol=1e-6)


def test_packing_and_text_mask_roundtrip(ltx_dir):
    x = torch.randn(2, 8, 3, 4, 6)
    assert torch.equal(unpack_latents(pack_latents(x), 3, 4, 6), x)
    b = load_backend(str(ltx_dir))
    pos, neg = b.encode_prompt("a red circle", "")
    text, mask, _ = unpack_text(pos[None], has_mask=True)
    assert text.shape == (1, 16, 16) and mask[0].tolist()[:4] == [1, 1, 1, 0]


@torch.no_grad()
def test_canvas_offset_does_not_change_a_tile(ltx_dir):
    from diffusers import LTXVideoTransformer3DModel

    model = LTXVideoTransformer3DModel.from_pretrained(str(ltx_dir), subfolder="transformer").double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2 * 4 * 4, 8, generator=g, dtype=torch.float64)
    text = torch.randn(1, 16, 16, generator=g, dtype=torch.float64)
    mask = torch.ones(1, 16)
    scale = (8 / 25, 32, 32)
    grid = torch.stack(
        torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (2, 4, 4)), indexing="ij")
    )
    coords = (grid * torch.tensor(scale, dtype=torch.float64).view(3, 1, 1, 1)).flatten(1)[None]

    def run(offset):
        shift = torch.tensor([0.0, offset[0] * 32, offset[1] * 32], dtype=torch.float64).view(1, 3, 1)
        return model(
            hidden_states=x,
            encoder_hidden_states=text,
            timestep=torch.tensor([500.0]),
            encoder_attention_mask=mask,
            video_coords=coords + shift,
            return_dict=False,
        )[0]

    base = run((0, 0))
    default = model(
        hidden_states=x,
        encoder_hidden_states=text,
        timestep=torch.tensor([500.0]),
        encoder_attention_mask=mask,
        num_frames=2,
        height=4,
        width=4,
        rope_interpolation_scale=scale,
        return_dict=False,
    )[0]
    top = float(base.abs().max())
    # the same positions given as coordinates: only the order of float32 rounding differs
    floor = float((base - default).abs().max()) / top
    moved = float((run((3, 5)) - base).abs().max()) / top
    far = float((run((40, 70)) - base).abs().max()) / top
    # rotary positions in self-attention only (text comes through cross-attention): relative, so
    # the offset changes the tile by float round-off of the float32 cos/sin tables only
    print(f"LTX offset effect: floor {floor:.1e}, (3,5) {moved:.1e}, (40,70) {far:.1e}")
    assert floor < 1e-4 and moved < 1e-4 and far < 1e-4, (floor, moved, far)


def test_one_native_tile_equals_the_diffusers_pipeline(tmp_path, client, ltx_dir):
    from diffusers import LTXPipeline

    spec = native_spec(ltx_dir, steps=4, guidance=3.0, frames=9, size=(128, 128))
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    assert result.plan.refine.grid.n_tiles == 1 and result.plan.sketch is None
    start, ours, (neg, pos) = stored_steps(result)
    pos_text, pos_mask, _ = unpack_text(torch.from_numpy(pos)[None], has_mask=True)
    neg_text, neg_mask, _ = unpack_text(torch.from_numpy(neg)[None], has_mask=True)

    pipe = LTXPipeline.from_pretrained(str(ltx_dir))
    packed = pack_latents(torch.from_numpy(start).permute(1, 0, 2, 3)[None])
    theirs = collect_steps(
        pipe,
        prompt_embeds=pos_text,
        prompt_attention_mask=pos_mask,
        negative_prompt_embeds=neg_text,
        negative_prompt_attention_mask=neg_mask,
        latents=packed,
        num_inference_steps=4,
        guidance_scale=3.0,
        height=128,
        width=128,
        num_frames=9,
        frame_rate=25,
    )
    theirs = [unpack_latents(t, 2, 4, 4)[0].permute(1, 0, 2, 3) for t in theirs]
    assert_steps_close(ours, theirs)
    assert probe_video(result.video_path).frames == 9


def test_tiled_render_with_shifts_matches_the_full_canvas_method(tmp_path, client, ltx_dir):
    # a 4x4-cell tile shifts by 1 cell per step (tile // 16, at least 1)
    spec = native_spec(ltx_dir, steps=4, guidance=3.0, frames=9, size=(256, 256)).replace(
        refine_steps=3, shift=sd.ShiftSettings()
    )
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    plan = result.plan
    assert plan.refine.grid.n_tiles == 4 and plan.sketch is not None and plan.refine.shift.stride_y > 0
    assert_tiled_render_matches_reference(result)
    info = probe_video(result.video_path)
    assert (info.width, info.height, info.frames) == (256, 256, 9)


def test_scheduler_alias_keeps_the_native_shift(ltx_dir):
    import math

    from pipelines.schedulers import resolve_scheduler

    info = model_info(str(ltx_dir))
    cls, cfg = resolve_scheduler(info.scheduler_class, info.scheduler_config, "unipc")
    assert cls == "UniPCMultistepScheduler" and cfg["use_flow_sigmas"]
    assert cfg["flow_shift"] == pytest.approx(math.exp(info.scheduler_config["mu"]))
