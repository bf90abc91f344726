"""HunyuanVideo behind the protocol: Llama + CLIP text packed into one tensor, embedded guidance
(a spec field), positions in tiles, the pipeline oracle, tiled renders.

The tiny model's native size is 32x32 (4x4 latent cells, 2x2 patches) and renders have 5 frames:
the VAE decode dominates these renders, and it scales with the pixels."""

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
from pipelines.base import unpack_text
from pipelines.hunyuan import OffsetRotary, save_tiny_pipeline, unpack_prompt
from storage import probe_video
from supergen_dask.cli import build_parser, spec_from_args
from supergen_dask.spec import SpecError

NATIVE = 32


@pytest.fixture(scope="module")
def hy_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-hunyuan", native=(NATIVE, NATIVE))


def test_directory_is_detected_with_its_rules(hy_dir):
    info = model_info(str(hy_dir))
    assert info.family == "hunyuan" and info.scheduler_class == "FlowMatchSigmasScheduler"
    assert info.default_guidance == 1.0  # real CFG off, as the pipeline's true_cfg_scale
    assert info.embedded_guidance == 6.0 and not info.supports_image
    assert (info.text_tokens, info.text_embed_dim) == (17, 17)  # 16 tokens + pooled row, 16 + mask column


def test_prompt_packs_llama_tokens_mask_and_clip_pooled(hy_dir):
    from diffusers import HunyuanVideoPipeline

    b = load_backend(str(hy_dir))
    pos, _ = b.encode_prompt("a red circle", "")
    text, mask, pooled, guidance = unpack_prompt(pos[None], pooled_dim=8)
    assert guidance.tolist() == [6.0]  # the model's embedded guidance rides with the prompt
    assert unpack_prompt(b.encode_prompt("a red circle", "", embedded_guidance_scale=3.5)[1][None], 8)[
        3
    ].tolist() == [3.5]
    pipe = HunyuanVideoPipeline.from_pretrained(str(hy_dir))
    template = {"template": "describe : {}", "crop_start": 3}
    embeds, want_pooled, want_mask = pipe.encode_prompt(
        "a red circle", prompt_template=template, max_sequence_length=16
    )
    assert (
        torch.equal(text, embeds)
        and torch.equal(mask, want_mask.float())
        and torch.equal(pooled, want_pooled)
    )


@torch.no_grad()
def test_canvas_offset_changes_a_tile(hy_dir):
    from diffusers import HunyuanVideoTransformer3DModel

    model = HunyuanVideoTransformer3DModel.from_pretrained(str(hy_dir), subfolder="transformer").double()
    original = model.rope
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 8, 8, generator=g, dtype=torch.float64)
    call = dict(
        hidden_states=x,
        timestep=torch.tensor([500.0], dtype=torch.float64),
        encoder_hidden_states=torch.randn(1, 16, 16, generator=g, dtype=torch.float64),
        encoder_attention_mask=torch.ones(1, 16, dtype=torch.float64),
        pooled_projections=torch.randn(1, 8, generator=g, dtype=torch.float64),
        guidance=torch.tensor([6000.0], dtype=torch.float64),
        return_dict=False,
    )
    stock = model(**call)[0]
    model.rope = OffsetRotary(original)
    assert torch.equal(model(**call)[0], stock)  # offset 0: the transformer's own tables
    model.rope.set_offset((3, 5))
    moved = float((model(**call)[0] - stock).abs().max() / stock.abs().max())
    # rotary on video tokens only, text and video attend jointly: absolute positions matter
    assert moved > 1e-3, moved


def test_one_native_tile_equals_the_diffusers_pipeline(tmp_path, client, hy_dir):
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline.from_pretrained(str(hy_dir))
    # embedded guidance only (the spec's, not the default), then the default with true CFG on top
    for cfg, embedded in ((1.0, 4.0), (3.0, None)):
        spec = native_spec(
            hy_dir,
            steps=3,
            guidance=cfg,
            frames=5,
            size=(NATIVE, NATIVE),
            negative_prompt="blue square",
            embedded_guidance_scale=embedded,
        )
        result = sd.render(spec, output_dir=tmp_path / f"r{cfg}", client=client, progress=False)
        assert result.plan.refine.grid.n_tiles == 1 and result.plan.sketch is None
        assert result.plan.spec.embedded_guidance_scale == (embedded or 6.0)
        start, ours, (neg, pos) = stored_steps(result)
        text, mask, pooled = unpack_text(torch.from_numpy(pos)[None], has_mask=True, pooled_dim=8)
        ntext, nmask, npooled = unpack_text(torch.from_numpy(neg)[None], has_mask=True, pooled_dim=8)
        theirs = collect_steps(
            pipe,
            prompt_embeds=text,
            prompt_attention_mask=mask,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=ntext,
            negative_prompt_attention_mask=nmask,
            negative_pooled_prompt_embeds=npooled,
            latents=torch.from_numpy(start).permute(1, 0, 2, 3)[None],
            num_inference_steps=3,
            guidance_scale=embedded or 6.0,
            true_cfg_scale=cfg,
            height=NATIVE,
            width=NATIVE,
            num_frames=5,
        )
        assert_steps_close(ours, [t[0].permute(1, 0, 2, 3) for t in theirs])
    assert probe_video(result.video_path).frames == 5


def test_embedded_guidance_scale_is_a_spec_field_in_the_hash_and_refused_without_one(hy_dir):
    spec = sd.RenderSpec(prompt="a red circle", model=str(hy_dir))
    assert spec.resolved().embedded_guidance_scale == 6.0  # the model's, when left open
    plan = sd.plan_render(spec)
    assert sd.plan_render(spec.replace(embedded_guidance_scale=6.0)).token == plan.token
    assert sd.plan_render(spec.replace(embedded_guidance_scale=5.0)).token != plan.token
    wan = sd.RenderSpec(prompt="a red circle", model="tiny-random-wan")
    with pytest.raises(SpecError, match=r"^embedded_guidance_scale: model tiny-random-wan \(wan\) takes no"):
        wan.replace(embedded_guidance_scale=6.0).resolved()
    with pytest.raises(SpecError, match="embedded_guidance_scale: must be >= 0"):
        spec.replace(embedded_guidance_scale=-1.0).resolved()
    args = build_parser().parse_args(
        ["render", "--prompt", "x", "--model", str(hy_dir), "--embedded-guidance-scale", "3.5"]
    )
    assert spec_from_args(args).embedded_guidance_scale == 3.5


def test_tiled_render_with_shifts_matches_the_full_canvas_method(tmp_path, client, hy_dir):
    spec = native_spec(hy_dir, steps=3, guidance=1.0, frames=5, size=(2 * NATIVE, 2 * NATIVE)).replace(
        refine_steps=2, shift=sd.ShiftSettings()
    )
    with small_margins():
        result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    plan = result.plan
    assert plan.refine.grid.n_tiles == 4 and plan.sketch is not None and plan.refine.shift.stride_y > 0
    assert plan.refine.offset(plan.refine.steps[-1]) != (0, 0)  # the last step's tiles are shifted
    assert_tiled_render_matches_reference(result)
    info = probe_video(result.video_path)
    assert (info.width, info.height, info.frames) == (2 * NATIVE, 2 * NATIVE, 5)


def test_three_x_render_is_bit_identical_on_one_and_three_workers(tmp_path, hy_dir):
    # in-process workers share one backend: concurrent tiles must not see each other's rotary offset
    from conftest import assert_renders_identical, local_client

    spec = native_spec(hy_dir, steps=3, guidance=1.0, frames=5, size=(3 * NATIVE, 3 * NATIVE)).replace(
        refine_steps=2, shift=sd.ShiftSettings()
    )
    with small_margins(), local_client(1) as c1:
        one = sd.render(spec, output_dir=tmp_path / "one", client=c1, progress=False)
    with small_margins(), local_client(3) as c3:
        sd.render(spec, output_dir=tmp_path / "three", client=c3, progress=False)
    assert one.plan.refine.grid.n_tiles == 9
    assert_renders_identical(tmp_path / "one", tmp_path / "three")


def test_rotary_offset_is_per_thread():
    import threading

    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed

    rope = OffsetRotary(HunyuanVideoRotaryPosEmbed(2, 1, [2, 4, 4], 256.0))
    x = torch.zeros(1, 4, 2, 8, 8)
    barrier = threading.Barrier(2)
    seen = {}

    def tile(name, offset):
        rope.set_offset(offset)
        barrier.wait()  # both offsets are set before either thread builds its tables
        seen[name] = rope(x)

    threads = [threading.Thread(target=tile, args=(n, o)) for n, o in (("a", (0, 0)), ("b", (3, 5)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stock = rope.inner(x)
    assert torch.equal(seen["a"][0], stock[0]) and not torch.equal(seen["b"][0], stock[0])
