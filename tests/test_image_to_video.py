"""Image-to-video at the protocol level (the renderer does not pass images yet): a Wan 2.1 I2V
backend's ``encode_image`` + ``predict(image=...)`` loop equals WanImageToVideoPipeline, and a
tile's condition is the crop of its window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_checks import assert_steps_close, collect_steps
from PIL import Image

from pipelines import ImageCondition, load_backend, model_info
from pipelines.wan import save_tiny_pipeline


@pytest.fixture(scope="module")
def i2v_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "wan-i2v", variant="2.1-i2v")


def test_i2v_directory_is_detected_and_refuses_to_run_without_an_image(i2v_dir):
    info = model_info(str(i2v_dir))
    assert info.family == "wan" and info.supports_image
    b = load_backend(str(i2v_dir))
    pos, neg = b.encode_prompt("a red circle", "")
    with pytest.raises(ValueError, match="image-to-video"):
        b.predict(torch.randn(1, 16, 3, 8, 8), torch.tensor([500.0]), pos[None])
    with pytest.raises(NotImplementedError, match="text-to-video"):
        load_backend("tiny-random-wan").encode_image(torch.zeros(1, 3, 64, 64), 9)


def test_condition_crop_wraps_like_a_tile():
    lat = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(1, 2, 3, 4, 6)
    cond = ImageCondition(lat, torch.ones(1, 5, 7))
    tile = cond.crop(3, 4, 2, 3)
    assert torch.equal(tile.latents, lat[..., [3, 0], :][..., [4, 5, 0]])
    both = tile.repeat(2)
    assert both.latents.shape == (2, 2, 3, 2, 3) and both.embeds.shape == (2, 5, 7)


def test_backend_loop_equals_the_diffusers_i2v_pipeline(i2v_dir):
    from diffusers import WanImageToVideoPipeline
    from diffusers.video_processor import VideoProcessor

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    b = load_backend(str(i2v_dir))
    pos, neg = b.encode_prompt("a red circle moving right", "")
    g = torch.Generator().manual_seed(3)
    start = torch.randn(1, 16, 3, 8, 8, generator=g)
    steps, scale = 4, 5.0

    pipe = WanImageToVideoPipeline.from_pretrained(str(i2v_dir))
    theirs = collect_steps(
        pipe,
        image=picture,
        prompt_embeds=pos[None],
        negative_prompt_embeds=neg[None],
        latents=start.clone(),
        num_inference_steps=steps,
        guidance_scale=scale,
        height=64,
        width=64,
        num_frames=9,
    )

    # what a renderer does for a one-tile render: condition once, then predict with it every step
    image = VideoProcessor(vae_scale_factor=8).preprocess(picture, height=64, width=64)
    cond = b.encode_image(image, num_frames=9)
    assert cond.latents.shape == (1, 20, 3, 8, 8) and cond.embeds.shape == (1, 32 * 32 + 1, 4)
    sched = b.make_scheduler()
    sched.set_timesteps(steps)
    x, ours = start.clone(), []
    for t in sched.timesteps:
        tile = cond.crop(0, 0, 8, 8).repeat(2)
        out = b.predict(torch.cat([x, x]), t.expand(2), torch.stack([neg, pos]), (0, 0), image=tile)
        u, c = out.chunk(2)
        x = sched.step(u + scale * (c - u), t, x, return_dict=False)[0]
        ours.append(x[0].permute(1, 0, 2, 3).numpy())
    assert_steps_close(ours, [t[0].permute(1, 0, 2, 3) for t in theirs])


@pytest.fixture(scope="module")
def cog_i2v_dir(tmp_path_factory):
    from pipelines.cogvideox import save_tiny_pipeline as save_cog

    return save_cog(tmp_path_factory.mktemp("models") / "cog-i2v", image=True)


def test_cogvideox_backend_loop_equals_the_diffusers_i2v_pipeline(cog_i2v_dir, monkeypatch):
    import diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video as cog_i2v
    from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline
    from diffusers.video_processor import VideoProcessor

    info = model_info(str(cog_i2v_dir))
    assert info.family == "cogvideox" and info.supports_image and info.latent_channels == 4
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    b = load_backend(str(cog_i2v_dir))
    pos, neg = b.encode_prompt("a red circle moving right", "")
    g = torch.Generator().manual_seed(3)
    start = torch.randn(1, 4, 4, 8, 8, generator=g)  # (B, C, F, h, w), F = 3 + the padding frame
    steps, scale = 4, 6.0

    # the pipeline samples the image's latent distribution; the backend takes its mode (determinism)
    original = cog_i2v.retrieve_latents
    monkeypatch.setattr(
        cog_i2v, "retrieve_latents", lambda out, generator=None: original(out, sample_mode="argmax")
    )
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(str(cog_i2v_dir))
    pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config)
    theirs = collect_steps(
        pipe,
        image=picture,
        prompt_embeds=pos[None],
        negative_prompt_embeds=neg[None],
        latents=start.permute(0, 2, 1, 3, 4).clone(),
        num_inference_steps=steps,
        guidance_scale=scale,
        height=64,
        width=64,
        num_frames=9,
    )

    image = VideoProcessor(vae_scale_factor=8).preprocess(picture, height=64, width=64)
    cond = b.encode_image(image, num_frames=9)
    assert cond.latents.shape == (1, 4, 4, 8, 8) and cond.embeds is None
    sched = b.make_scheduler()
    sched.set_timesteps(steps)
    x, ours = start.clone(), []
    for t in sched.timesteps:
        out = b.predict(
            torch.cat([x, x]),
            t.expand(2),
            torch.stack([neg, pos]),
            (0, 0),
            image=cond.crop(0, 0, 8, 8).repeat(2),
        )
        u, c = out.chunk(2)
        x = sched.step(u + scale * (c - u), t, x, return_dict=False)[0]
        ours.append(x[0].permute(1, 0, 2, 3).numpy())
    assert_steps_close(ours, [t[0] for t in theirs])
