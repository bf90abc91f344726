"""Image-to-video renders (``RenderSpec.image``, ``--image``): the one-tile native render is the
diffusers I2V pipeline's own path; tiled renders give each tile the crop of the image condition
at its shifted window, are the same bytes on 1 and 3 workers, and resume after a kill; bad images
are refused before anything is written; the image's content is part of the render's identity."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask.config
import numpy as np
import pytest
import torch
from conftest import assert_renders_identical, local_client, wait_idle
from family_checks import assert_steps_close, collect_steps, native_spec, stored_steps
from PIL import Image

import supergen_dask as sd
from pipelines import ImageCondition
from storage import RenderStore
from supergen_dask import worker_models
from supergen_dask.cli import EXIT_BAD_INPUT, main
from supergen_dask.conditioning import crop_tile, read_image, stage_image
from supergen_dask.geometry import TileKey
from supergen_dask.plan import plan_render
from supergen_dask.spec import SpecError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from pipelines.cogvideox import save_tiny_pipeline as save_cog
    from pipelines.hunyuan import save_tiny_pipeline as save_hunyuan
    from pipelines.ltx import save_tiny_pipeline as save_ltx
    from pipelines.wan import save_tiny_pipeline as save_wan

    root = tmp_path_factory.mktemp("models")
    return {
        "wan": save_wan(root / "wan-i2v", variant="2.1-i2v"),
        "cog": save_cog(root / "cog-i2v", image=True),
        "ti2v": save_wan(root / "wan-ti2v-i2v", variant="2.2-ti2v-i2v", native=(128, 128)),
        "ltx": save_ltx(root / "ltx-i2v", image=True),
        # latent_concat: its padding latent frame goes through the sketch's decode and re-encode
        "hunyuan": save_hunyuan(root / "hunyuan-i2v", native=(32, 32), image="latent_concat"),
    }


SIZE_2X = {"wan": 128, "cog": 128, "ti2v": 256, "ltx": 256, "hunyuan": 64}
FRAMES = {"hunyuan": 5}  # its VAE dominates its renders; 9 for the others


def _picture(path: Path, seed: int, size=(64, 64)) -> Path:
    rng = np.random.default_rng(seed)
    # smooth enough that a resize means something, with detail everywhere
    small = rng.integers(0, 256, (size[0] // 4, size[1] // 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size[::-1], Image.BICUBIC).save(path)
    return path


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    return _picture(tmp_path_factory.mktemp("images") / "first.png", 0)


# -- the oracle: one native tile, no sketch, is the diffusers I2V pipeline ------------------------
def test_native_wan_i2v_render_equals_the_diffusers_pipeline(tmp_path, client, models, picture):
    from diffusers import WanImageToVideoPipeline

    steps = 4
    spec = native_spec(models["wan"], steps=steps, guidance=5.0, frames=9, size=(64, 64), image=str(picture))
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    assert result.plan.refine.grid.n_tiles == 1 and result.plan.sketch is None
    start, ours, (neg, pos) = stored_steps(result)
    pipe = WanImageToVideoPipeline.from_pretrained(str(models["wan"]))
    theirs = collect_steps(
        pipe,
        image=Image.open(picture),
        prompt_embeds=torch.from_numpy(pos)[None],
        negative_prompt_embeds=torch.from_numpy(neg)[None],
        latents=torch.from_numpy(start).permute(1, 0, 2, 3)[None],
        num_inference_steps=steps,
        guidance_scale=5.0,
        height=64,
        width=64,
        num_frames=9,
    )
    assert_steps_close(ours, [t[0].permute(1, 0, 2, 3) for t in theirs])
    # the condition really mattered: another image gives other latents
    other = _picture(tmp_path / "other.png", 5)
    again = sd.render(
        spec.replace(image=str(other)), output_dir=tmp_path / "o", client=client, progress=False
    )
    assert not np.allclose(stored_steps(again)[1][-1], ours[-1])


def test_native_cogvideox_i2v_render_equals_the_diffusers_pipeline(
    tmp_path, client, models, picture, monkeypatch
):
    import diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video as cog_i2v
    from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline

    steps = 4
    spec = native_spec(models["cog"], steps=steps, guidance=6.0, frames=9, size=(64, 64), image=str(picture))
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    assert result.plan.refine.grid.n_tiles == 1 and result.plan.sketch is None
    start, ours, (neg, pos) = stored_steps(result)
    # the pipeline samples the image's latent distribution; the backend takes its mode
    original = cog_i2v.retrieve_latents
    monkeypatch.setattr(
        cog_i2v, "retrieve_latents", lambda out, generator=None: original(out, sample_mode="argmax")
    )
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(str(models["cog"]))
    pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config)
    theirs = collect_steps(
        pipe,
        image=Image.open(picture),
        prompt_embeds=torch.from_numpy(pos)[None],
        negative_prompt_embeds=torch.from_numpy(neg)[None],
        latents=torch.from_numpy(start)[None],  # the pipeline's (B, F, C, h, w) is the stored layout
        num_inference_steps=steps,
        guidance_scale=6.0,
        height=64,
        width=64,
        num_frames=9,
    )
    assert_steps_close(ours, [t[0] for t in theirs])


def test_native_wan22_ti2v_render_equals_the_diffusers_pipeline(tmp_path, client, models, picture):
    """TI2V-5B's condition is frozen cells (the first latent frame is the image's, at timestep 0):
    every step's stored latents are the pipeline's with those cells fixed, as it fixes them
    before decoding."""
    from diffusers import WanImageToVideoPipeline

    steps = 4
    spec = native_spec(
        models["ti2v"], steps=steps, guidance=5.0, frames=9, size=(128, 128), image=str(picture)
    )
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    assert result.plan.refine.grid.n_tiles == 1 and result.plan.model.image_frozen
    start, ours, (neg, pos) = stored_steps(result)
    store = RenderStore.open(str(result.store_path), mode="r")
    cond = torch.from_numpy(store.read_canvas("refine", "image", None)).permute(1, 0, 2, 3)[None]
    assert torch.equal(cond[:, 0, 0], torch.ones_like(cond[:, 0, 0])) and not cond[:, 0, 1:].any()
    frozen = ImageCondition(cond, None, frozen=True)
    pipe = WanImageToVideoPipeline.from_pretrained(str(models["ti2v"]))
    theirs = collect_steps(
        pipe,
        image=Image.open(picture),
        prompt_embeds=torch.from_numpy(pos)[None],
        negative_prompt_embeds=torch.from_numpy(neg)[None],
        latents=torch.from_numpy(start).permute(1, 0, 2, 3)[None],
        num_inference_steps=steps,
        guidance_scale=5.0,
        height=128,
        width=128,
        num_frames=9,
    )
    assert_steps_close(ours, [frozen.freeze(t)[0].permute(1, 0, 2, 3) for t in theirs])
    assert np.abs(ours[-1][1:] - start[1:]).max() > 0.1  # the moving frames moved


def test_native_ltx_i2v_render_equals_the_diffusers_pipeline(tmp_path, client, models, picture):
    """LTX's condition is frozen cells too: the pipeline, given latents whose first frame is the
    image's, keeps that frame at timestep 0 and never steps it."""
    from diffusers import LTXImageToVideoPipeline
    from diffusers.video_processor import VideoProcessor

    from pipelines.base import unpack_text
    from pipelines.ltx import pack_latents, unpack_latents

    steps = 4
    spec = native_spec(
        models["ltx"], steps=steps, guidance=3.0, frames=9, size=(128, 128), image=str(picture)
    )
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    assert result.plan.refine.grid.n_tiles == 1 and result.plan.model.image_frozen
    start, ours, (neg, pos) = stored_steps(result)
    store = RenderStore.open(str(result.store_path), mode="r")
    cond = torch.from_numpy(store.read_canvas("refine", "image", None)).permute(1, 0, 2, 3)[None]
    pipe = LTXImageToVideoPipeline.from_pretrained(str(models["ltx"]))
    # the stored condition is the pipeline's normalised image latent
    pixels = VideoProcessor(vae_scale_factor=32).preprocess(Image.open(picture), height=128, width=128)
    z = pipe.vae.encode(pixels[:, :, None]).latent_dist.mode()
    z = pipe._normalize_latents(
        z, pipe.vae.latents_mean, pipe.vae.latents_std, pipe.vae.config.scaling_factor
    )
    torch.testing.assert_close(cond[:, 1:, :1], z, rtol=0, atol=1e-5)
    x0 = ImageCondition(cond, None, frozen=True).freeze(torch.from_numpy(start).permute(1, 0, 2, 3)[None])
    pos_text, pos_mask, _ = unpack_text(torch.from_numpy(pos)[None], has_mask=True)
    neg_text, neg_mask, _ = unpack_text(torch.from_numpy(neg)[None], has_mask=True)
    theirs = collect_steps(
        pipe,
        image=Image.open(picture),
        prompt_embeds=pos_text,
        prompt_attention_mask=pos_mask,
        negative_prompt_embeds=neg_text,
        negative_prompt_attention_mask=neg_mask,
        latents=pack_latents(x0),
        num_inference_steps=steps,
        guidance_scale=3.0,
        height=128,
        width=128,
        num_frames=9,
        frame_rate=25,
    )
    assert_steps_close(ours, [unpack_latents(t, 2, 4, 4)[0].permute(1, 0, 2, 3) for t in theirs])


# -- tiles: the crop of the condition at each shifted window --------------------------------------
def _tiled_spec(model_dir, picture, **kw):
    fields = dict(
        prompt="a red circle moving right",
        model=str(model_dir),
        image=str(picture),
        height=128,
        width=128,
        num_frames=9,
        num_inference_steps=4,
        refine_steps=3,
        guidance_scale=5.0,
        seed=7,
        # compared step by step with an exact float32 whole-canvas reference: every step kept
        output=sd.OutputSettings(store_dtype="float32", keep_every=1, keep_history=True),
    )
    fields.update(kw)
    return sd.RenderSpec(**fields)


def _reference_with_image(result) -> list[torch.Tensor]:
    """The refine stage written the plain way on the whole canvas: the stage's condition taken
    whole (un-rolled), each tile of the shifted grid given ``ImageCondition.crop`` of it at its
    origin, predictions fused, one scheduler step per step (frozen cells fixed after it)."""
    plan = result.plan
    store = RenderStore.open(str(result.store_path), mode="r")
    st, g = plan.refine, plan.refine.grid
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    canvas = torch.from_numpy(store.read_canvas("refine", "image", None)).permute(1, 0, 2, 3)[None]
    embeds = store.array("refine/image_embeds")[...][None] if plan.model.image_tokens else None
    cond = ImageCondition(
        canvas, None if embeds is None else torch.from_numpy(embeds), plan.model.image_frozen
    )
    neg, pos = (torch.from_numpy(a) for a in store.read_prompt_embeds())
    x = torch.from_numpy(store.read_canvas("refine", "start", None)).permute(1, 0, 2, 3)[None]
    sched = plan.scheduler.build()
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(st.first)
    outs = []
    for step in st.steps:
        t = sched.timesteps[step]
        oy, ox = st.offset(step)
        rolled_in = torch.roll(x, (-oy, -ox), (-2, -1))
        rolled_pred = torch.empty_like(x)
        for r, c in g.tiles():
            sl = (..., slice(r * g.tile_h, (r + 1) * g.tile_h), slice(c * g.tile_w, (c + 1) * g.tile_w))
            tile = rolled_in[sl]
            origin = st.origin(TileKey("refine", step, r, c))
            tile_cond = cond.crop(*origin, g.tile_h, g.tile_w).repeat(2)
            out = backend.predict(
                torch.cat([tile, tile]), t.expand(2), torch.stack([neg, pos]), origin, image=tile_cond
            )
            u, cnd = out.chunk(2)
            rolled_pred[sl] = u + plan.spec.guidance_scale * (cnd - u)
        x = sched.step(torch.roll(rolled_pred, (oy, ox), (-2, -1)), t, x, return_dict=False)[0]
        x = cond.freeze(x)
        outs.append(x.clone())
    return outs


@pytest.mark.parametrize("family", ["wan", "cog", "ti2v", "ltx", "hunyuan"])
def test_tiled_i2v_render_is_the_same_on_1_and_3_workers_and_crops_at_the_shifted_window(
    tmp_path, models, picture, family
):
    size = SIZE_2X[family]
    spec = _tiled_spec(models[family], picture, height=size, width=size, num_frames=FRAMES.get(family, 9))
    plan = plan_render(spec)
    assert plan.refine.grid.n_tiles == 4 and plan.sketch is not None and plan.refine.shift.stride_y > 0
    results = {}
    for n in (1, 3):
        # 2 cells of VAE context (8 by default, which at these sizes decodes the whole canvas per
        # region): a quality setting this test does not check, and most of these renders' time
        with (
            local_client(n) as c,
            dask.config.set({"supergen.decode.margin": 2, "supergen.upscale.margin": 2}),
        ):
            results[n] = sd.render(spec, output_dir=tmp_path / f"w{n}", client=c, progress=False)
    assert_renders_identical(tmp_path / "w1", tmp_path / "w3")
    result = results[1]
    store = RenderStore.open(str(result.store_path), mode="r")
    assert store.tasks_done()["image_sketch"] and store.tasks_done()["image_refine"]
    # each stage's condition is the image at the stage's size, encoded (to round-off: a worker's
    # thread count may change a convolution's summation order)
    backend = worker_models.get_backend(spec.model, spec.dtype)
    f = plan.model.spatial_factor
    for st in plan.stages:
        g = st.grid
        pixels = stage_image(
            read_image(picture), (g.valid_h * f, g.valid_w * f), (g.canvas_h * f, g.canvas_w * f)
        )
        want = backend.encode_image(pixels, plan.pixel_frames)
        np.testing.assert_allclose(
            store.read_canvas(st.name, "image", None),
            crop_tile(want.latents, 0, 0, g.canvas_h, g.canvas_w),
            rtol=0,
            atol=1e-5,
        )
    # every refine step equals the whole-canvas method with each tile's crop of the condition
    for step, expected in zip(plan.refine.steps, _reference_with_image(result), strict=True):
        got = torch.from_numpy(store.read_canvas("refine", "latents", step)).permute(1, 0, 2, 3)[None]
        assert torch.equal(got, expected), f"refine step {step} differs from the whole-canvas method"
    if family == "wan":  # Wan 2.1 I2V's CLIP tokens are stored once per stage, whole
        embeds = store.array("refine/image_embeds")[...]
        assert (
            embeds.shape == (plan.model.image_tokens, plan.model.image_embed_dim)
            and np.isfinite(embeds).all()
        )


def test_tile_condition_is_the_wrapped_crop_of_the_canvas():
    from supergen_dask.conditioning import tile_image

    canvas = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(1, 2, 3, 4, 6)
    tile = crop_tile(canvas, 3, 4, 2, 3)  # stored (F, C, h, w)
    assert np.array_equal(tile, canvas[0, :, :, [3, 0]][:, :, :, [4, 5, 0]].permute(1, 0, 2, 3).numpy())
    assert tile_image(None, type("P", (), {"spec": sd.RenderSpec(prompt="x")})(), None, "cpu") is None


# -- identity of a render: the image's content ----------------------------------------------------
def test_the_image_content_not_its_path_names_the_render(tmp_path, models, picture):
    copy = tmp_path / "copy.png"
    shutil.copy(picture, copy)
    a, b = plan_render(_tiled_spec(models["wan"], picture)), plan_render(_tiled_spec(models["wan"], copy))
    assert a.token == b.token and a.image_sha256 == b.image_sha256
    assert Path(a.spec.image).is_absolute()
    other = plan_render(_tiled_spec(models["wan"], _picture(tmp_path / "o.png", 1)))
    assert other.token != a.token


def test_an_image_changed_after_planning_is_refused_by_its_task(tmp_path, client, models):
    pic = _picture(tmp_path / "p.png", 2)
    plan = plan_render(_tiled_spec(models["wan"], pic))
    _picture(pic, 3)  # overwritten before the render runs
    with pytest.raises(sd.RenderError, match="changed since this render was planned"):
        sd.run_render(plan, tmp_path / "r", client, progress=False)


# -- bad images: one line, nothing written ---------------------------------------------------------
def _bad_cases(tmp: Path, models) -> list[tuple[str, list[str], str]]:
    (tmp / "notimage.png").write_bytes(b"this is not a picture")
    good = _picture(tmp / "good.png", 4)
    (tmp / "truncated.png").write_bytes(good.read_bytes()[:60])
    (tmp / "folder.png").mkdir()
    wan = ["--model", str(models["wan"]), "--num-inference-steps", "2", "--refine-steps", "1"]
    return [
        ("missing", [*wan, "--image", str(tmp / "nope.png")], "no such file"),
        ("directory", [*wan, "--image", str(tmp / "folder.png")], "is a directory"),
        ("not-an-image", [*wan, "--image", str(tmp / "notimage.png")], "not an image file"),
        ("truncated", [*wan, "--image", str(tmp / "truncated.png")], "cannot decode"),
        ("no-image-for-i2v", wan, "image-to-video"),
        ("image-for-t2v", ["--model", "tiny-random-wan", "--image", str(good)], "text-to-video"),
    ]


def test_bad_images_are_one_line_errors_before_anything_is_written(tmp_path, models, capsys):
    for name, args, words in _bad_cases(tmp_path, models):
        out = tmp_path / f"out-{name}"
        before = set(tmp_path.rglob("*"))
        argv = ["render", "--prompt", "a red circle", *args, "--output-dir", str(out)]
        code = main([*argv, "--address", "tcp://127.0.0.1:1"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == EXIT_BAD_INPUT, (name, err)
        assert (
            len(lines) == 1 and lines[0].startswith("error: invalid spec: image: ") and words in lines[0]
        ), (name, err)
        assert set(tmp_path.rglob("*")) == before, name
    with pytest.raises(SpecError, match="image: must be the path"):
        sd.RenderSpec(prompt="x", model=str(models["wan"]), image=3).resolved()


# -- resume after a stop -------------------------------------------------------------------------
def test_stopped_i2v_render_resumes_bit_identical(tmp_path, client, models, picture, monkeypatch):
    """An image-to-video render stopped inside stage 2 resumes from its stored image condition to
    the same bytes. (A SIGKILLed driver and its workers is covered for text-to-video by
    test_resilience; what is particular to image-to-video is the condition read back on resume.)"""
    spec = _tiled_spec(
        models["wan"], picture, num_inference_steps=6, refine_steps=5, output=sd.OutputSettings()
    )
    reference = sd.render(spec, output_dir=tmp_path / "ref", client=client, progress=False)
    stop_at = spec.num_inference_steps - 2  # a refinement step
    original = RenderStore.mark_done

    def failing(self, stage, step, *args, **kwargs):
        if stage == "refine" and step == stop_at:
            raise OSError("stopped here")
        return original(self, stage, step, *args, **kwargs)

    monkeypatch.setattr(RenderStore, "mark_done", failing)
    out = tmp_path / "r"
    with pytest.raises(sd.RenderError, match="stopped"):
        sd.render(spec, output_dir=out, client=client, progress=False)
    monkeypatch.undo()
    wait_idle(client)  # tiles already running when the render stopped finish first
    store = RenderStore.open(str(out / "render.zarr"), mode="r")
    before = store.done_mask("refine")
    assert 0 < before.sum() < before.size, "the stop must land inside stage 2"
    assert store.task_is_done("image_refine")  # the condition is not encoded again
    sd.resume(out, client=client, progress=False)
    after = RenderStore.open(str(out / "render.zarr"), mode="r").tile_stats("refine")
    assert np.all(after["session"][before] == 1) and np.all(after["session"][~before] == 2)
    assert_renders_identical(reference.render_dir, out)


# -- the seam pass over the last grid's borders ---------------------------------------------------
@pytest.mark.parametrize("family", ["wan", "ltx"])  # a concatenated condition with CLIP tokens; frozen cells
def test_i2v_seam_pass_windows_get_their_crop_of_the_image_condition(
    tmp_path, client, models, picture, family
):
    from supergen_dask import tasks

    size = SIZE_2X[family]
    spec = _tiled_spec(models[family], picture, height=size, width=size)
    with dask.config.set(
        {"supergen.seam.max-extra": 1.0, "supergen.decode.margin": 2, "supergen.upscale.margin": 2}
    ):
        plan = plan_render(spec)
        assert plan.seam is not None and plan.refine.grid.n_tiles == 4
        result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    store = RenderStore.open(str(result.store_path), mode="r")
    assert store.done_mask("seam").all()
    seam, g = plan.seam, plan.seam.grid
    canvas = torch.from_numpy(store.read_canvas("refine", "image", None)).permute(1, 0, 2, 3)[None]
    embeds = store.array("refine/image_embeds")[...][None] if plan.model.image_tokens else None
    cond = ImageCondition(
        canvas, None if embeds is None else torch.from_numpy(embeds), plan.model.image_frozen
    )
    backend = worker_models.get_backend(spec.model, spec.dtype)
    prompt = tuple(torch.from_numpy(a) for a in store.read_prompt_embeds())
    final = store.read_canvas("seam", "latents", seam.step)  # (F, C, H, W), un-rolled
    oy, ox = seam.offset
    rolled = np.roll(final, (-oy, -ox), (-2, -1))
    for key in seam.keys():
        sample, region, last, image = tasks.seam_inputs(store, plan, key, "cpu")
        # the whole canvas's condition cropped at the window: what the window must have been given
        want = cond.crop(*seam.origin(key), g.tile_h, g.tile_w).repeat(2)
        torch.testing.assert_close(image.latents, want.latents, rtol=0, atol=0)
        expected = tasks.seam_window(backend, plan, key, prompt, sample, region, last, want)
        got = rolled[
            ..., key.row * g.tile_h : (key.row + 1) * g.tile_h, key.col * g.tile_w : (key.col + 1) * g.tile_w
        ]
        np.testing.assert_array_equal(got, expected[0].permute(1, 0, 2, 3).numpy())
        y0, x0 = seam.origin(key)
        wrong = cond.crop(y0 + 1, x0 + 1, g.tile_h, g.tile_w).repeat(2)  # a crop one cell off
        sample, region, last, _ = tasks.seam_inputs(store, plan, key, "cpu")  # a stepped region is spent
        off = tasks.seam_window(backend, plan, key, prompt, sample, region, last, wrong)
        assert not torch.equal(off, expected), "the window's result does not depend on its crop"
    if plan.model.image_frozen:  # cells the condition fixes stay fixed through the pass
        whole = torch.from_numpy(final).permute(1, 0, 2, 3)[None]
        torch.testing.assert_close(cond.freeze(whole), whole, rtol=0, atol=0)
