"""HunyuanVideo behind the protocol: Llama + CLIP text packed into one tensor, embedded guidance,
positions in tiles, the pipeline oracle, tiled renders."""

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
from pipelines.hunyuan import OffsetRotary, save_tiny_pipeline
from storage import probe_video


@pytest.fixture(scope="module")
def hy_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-hunyuan")


def test_directory_is_detected_with_its_rules(hy_dir):
    info = model_info(str(hy_dir))
    assert info.family == "hunyuan" and info.scheduler_class == "FlowMatchSigmasScheduler"
    assert info.default_guidance == 1.0  # real CFG off, as the pipeline's true_cfg_scale
    assert (info.text_tokens, info.text_embed_dim) == (17, 17)  # 16 tokens + pooled row, 16 + mask column


def test_prompt_packs_llama_tokens_mask_and_clip_pooled(hy_dir):
    from diffusers import HunyuanVideoPipeline

    b = load_backend(str(hy_dir))
    pos, _ = b.encode_prompt("a red circle", "")
    text, mask, pooled = unpack_text(pos[None], has_mask=True, pooled_dim=8)
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

    for cfg in (1.0, 3.0):  # the pipeline's default (embedded guidance only), then true CFG on top
        spec = native_spec(
            hy_dir, steps=4, guidance=cfg, frames=9, size=(64, 64), negative_prompt="blue square"
        )
        result = sd.render(spec, output_dir=tmp_path / f"r{cfg}", client=client, progress=False)
        assert result.plan.refine.grid.n_tiles == 1 and result.plan.sketch is None
        start, ours, (neg, pos) = stored_steps(result)
        text, mask, pooled = unpack_text(torch.from_numpy(pos)[None], has_mask=True, pooled_dim=8)
        ntext, nmask, npooled = unpack_text(torch.from_numpy(neg)[None], has_mask=True, pooled_dim=8)
        pipe = HunyuanVideoPipeline.from_pretrained(str(hy_dir))
        theirs = collect_steps(
            pipe,
            prompt_embeds=text,
            prompt_attention_mask=mask,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=ntext,
            negative_prompt_attention_mask=nmask,
            negative_pooled_prompt_embeds=npooled,
            latents=torch.from_numpy(start).permute(1, 0, 2, 3)[None],
            num_inference_steps=4,
            guidance_scale=6.0,
            true_cfg_scale=cfg,
            height=64,
            width=64,
            num_frames=9,
        )
        assert_steps_close(ours, [t[0].permute(1, 0, 2, 3) for t in theirs])
    assert probe_video(result.video_path).frames == 9


def test_tiled_render_with_shifts_matches_the_full_canvas_method(tmp_path, client, hy_dir):
    spec = native_spec(hy_dir, steps=4, guidance=1.0, frames=9, size=(128, 128)).replace(
        refine_steps=3, shift=sd.ShiftSettings()
    )
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    plan = result.plan
    assert plan.refine.grid.n_tiles == 4 and plan.sketch is not None and plan.refine.shift.stride_y > 0
    assert_tiled_render_matches_reference(result)
    info = probe_video(result.video_path)
    assert (info.width, info.height, info.frames) == (128, 128, 9)


def test_three_x_render_is_bit_identical_on_one_and_three_workers(tmp_path, hy_dir):
    # in-process workers share one backend: concurrent tiles must not see each other's rotary offset
    from conftest import assert_renders_identical, local_client

    spec = native_spec(hy_dir, steps=4, guidance=1.0, frames=9, size=(192, 192)).replace(
        refine_steps=3, shift=sd.ShiftSettings()
    )
    with local_client(1) as c1:
        one = sd.render(spec, output_dir=tmp_path / "one", client=c1, progress=False)
    with local_client(3) as c3:
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
