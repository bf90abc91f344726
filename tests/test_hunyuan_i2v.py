"""HunyuanVideo image-to-video (``HunyuanVideoImageToVideoPipeline``), both condition types: the
directory's rules, the Llava prompt encoder that sees the image, and the oracle (a native one-tile
render with k = T is the stock pipeline step by step). The tiled 2x render, 1 vs 3 workers, is
in tests/test_render_image_to_video.py with the other image-to-video families.

The pipeline starts from ``0.999 * latents + 0.001 * image latent``; a render starts from its
noise alone, so the pipeline is handed the latents that this blend turns into the render's start.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from family_checks import assert_steps_close, collect_steps, native_spec, stored_steps
from PIL import Image

import supergen_dask as sd
from pipelines import load_backend, model_info
from pipelines.hunyuan import save_tiny_pipeline, unpack_prompt
from storage import RenderStore, probe_video
from supergen_dask.spec import SpecError

NATIVE = 32
FRAMES = 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        kind: save_tiny_pipeline(root / kind, native=(NATIVE, NATIVE), image=kind)
        for kind in ("latent_concat", "token_replace")
    }


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("images") / "first.png"
    Image.fromarray(small).resize((NATIVE, NATIVE), Image.BICUBIC).save(path)
    return path


def test_directories_are_detected_with_their_rules(models):
    concat, replace = (model_info(str(models[k])) for k in ("latent_concat", "token_replace"))
    for info in (concat, replace):
        assert info.family == "hunyuan" and info.supports_image and info.prompt_sees_image
        assert info.latent_channels == 4 and info.image_channels == 5 and info.image_tokens == 0
        # 4 image tokens, every 2nd kept, then 16 text tokens less the 4 the pipeline crops; + pooled
        assert (info.text_tokens, info.text_embed_dim) == (2 + 16 - 4 + 1, 17)
    # latent_concat: image latent and mask as channels; the pipeline drops the first latent frame
    assert not concat.image_frozen and concat.latent_pad_frames == 1
    assert concat.latent_frames(5) == 3 and concat.embedded_guidance is None
    # token_replace: the first latent frame is the image's
    assert replace.image_frozen and replace.latent_pad_frames == 0 and replace.embedded_guidance == 6.0
    with pytest.raises(SpecError, match="^embedded_guidance_scale: model .* takes no embedded guidance"):
        sd.RenderSpec(
            prompt="x", model=str(models["latent_concat"]), image="x.png", embedded_guidance_scale=6.0
        ).resolved()


def test_a_directory_without_its_image_processor_is_refused(models, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models["token_replace"], broken)
    shutil.rmtree(broken / "image_processor")
    with pytest.raises(SpecError, match="incomplete: .*image_processor.* is missing"):
        sd.RenderSpec(prompt="x", model=str(broken)).resolved()


def _pipe(model_dir):
    from diffusers import HunyuanVideoImageToVideoPipeline

    return HunyuanVideoImageToVideoPipeline.from_pretrained(str(model_dir))


@pytest.mark.parametrize(
    "kind, cfg, embedded",
    [("latent_concat", 3.0, None), ("token_replace", 3.0, 4.0)],
    ids=["concat", "replace"],
)
def test_native_render_equals_the_diffusers_pipeline(tmp_path, client, models, picture, kind, cfg, embedded):
    steps = 3
    spec = native_spec(
        models[kind],
        steps=steps,
        guidance=cfg,
        frames=FRAMES,
        size=(NATIVE, NATIVE),
        negative_prompt="blue square",
        image=str(picture),
        embedded_guidance_scale=embedded,
    )
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    plan = result.plan
    assert plan.refine.grid.n_tiles == 1 and plan.sketch is None
    start, ours, (neg, pos) = stored_steps(result)
    pipe = _pipe(models[kind])
    image = Image.open(picture)

    # the stored prompts are the pipeline's encoding: Llava sees the image (the negative a black
    # one, with every 2nd image token, as the pipeline encodes it); shorter ones are zero-padded
    template = json.loads((models[kind] / "supergen.json").read_text())["prompt_template"]
    black = Image.new("RGB", (NATIVE, NATIVE), 0)
    packed = {}
    for name, stored, prompt, picture_in, interleave in (
        ("pos", pos, spec.prompt, image, 2 if kind == "latent_concat" else 4),
        ("neg", neg, spec.negative_prompt, black, 2),
    ):
        want, want_pooled, want_mask = pipe.encode_prompt(
            image=picture_in,
            prompt=prompt,
            prompt_template=template,
            max_sequence_length=16,
            image_embed_interleave=interleave,
        )
        text, mask, pooled, guidance = unpack_prompt(torch.from_numpy(stored)[None], pooled_dim=8)
        n = want.shape[1]
        assert torch.equal(text[:, :n], want) and torch.equal(mask[:, :n], want_mask.float())
        assert not text[:, n:].any() and not mask[:, n:].any() and torch.equal(pooled, want_pooled)
        assert guidance.tolist() == [0.0 if kind == "latent_concat" else embedded]  # 0: none taken
        packed[name] = (text[:, :n], mask[:, :n], pooled)
    assert packed["pos"][0].shape[1] == (14 if kind == "latent_concat" else 13)

    # the render's start, as the latents the pipeline's blend with the image latent turns into it
    store = RenderStore.open(str(result.store_path), mode="r")
    cond = torch.from_numpy(store.read_canvas("refine", "image", None)).permute(1, 0, 2, 3)[None]
    image_latent = cond[:, 1:, :1] if plan.model.image_frozen else cond[:, :4, :1]
    x0 = torch.from_numpy(start).permute(1, 0, 2, 3)[None]
    t = torch.tensor([0.999])
    blend_in = (x0 - image_latent * (1 - t)) / t
    theirs = collect_steps(
        pipe,
        image=image,
        prompt_embeds=packed["pos"][0],
        prompt_attention_mask=packed["pos"][1],
        pooled_prompt_embeds=packed["pos"][2],
        negative_prompt_embeds=packed["neg"][0],
        negative_prompt_attention_mask=packed["neg"][1],
        negative_pooled_prompt_embeds=packed["neg"][2],
        latents=blend_in,
        num_inference_steps=steps,
        guidance_scale=embedded or 1.0,
        true_cfg_scale=cfg,
        height=NATIVE,
        width=NATIVE,
        # latent_concat's pipeline drops the video of the first latent frame: 4 frames more
        num_frames=FRAMES + (4 if kind == "latent_concat" else 0),
    )
    assert_steps_close(ours, [s[0].permute(1, 0, 2, 3) for s in theirs])
    if plan.model.image_frozen:  # the first latent frame is the image's at every step
        assert all(np.array_equal(s[0], image_latent[0, :, 0].numpy()) for s in ours)
    assert probe_video(result.video_path).frames == FRAMES


def test_prompt_encoder_needs_the_image(models):
    b = load_backend(str(models["token_replace"]))
    with pytest.raises(ValueError, match="image-to-video model: its prompt encoder needs the image"):
        b.encode_prompt("a red circle", "")
