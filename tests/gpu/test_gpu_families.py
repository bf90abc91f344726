"""Every model family on GPUs: what tests/gpu/test_gpu_render.py shows for the tiny Wan 2.1 T2V
preset, for each family and mode the CPU oracle tests cover (Wan 2.1 I2V, Wan 2.2 A14B and
TI2V-5B, CogVideoX 1.5, HunyuanVideo, LTX-Video; text- and image-to-video).

- ``test_native_render_equals_the_diffusers_pipeline_in_bf16``: on one dask-cuda worker, the
  one-tile native render (k = T, no sketch, no shift) of the family's tiny model in bfloat16 is,
  step by step, the family's own diffusers pipeline run on the same card in bfloat16 from the
  same start, embeddings, scheduler and guidance.
- ``test_2x_render_is_the_same_on_two_gpus_as_on_one``: a 2x render (sketch, 2x2 shifted tiles)
  of the same model on two dask-cuda workers uses both cards and gives what one card gives.

Marked ``gpu`` and skipped without CUDA (CI has none); ``python scripts/run_gpu_tests.py`` runs
them with the rest of tests/gpu. The models are the CPU tests' (``save_tiny_pipeline`` of
``pipelines.*``), so the steps and sizes are theirs: each render takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import array_differences, assert_renders_identical, store_arrays
from family_checks import native_spec, small_margins, stored_steps
from gpu_clusters import gpu_clusters, render_on  # noqa: F401 (gpu_clusters: a fixture)
from PIL import Image

import supergen_dask as sd
from pipelines import ImageCondition
from pipelines.base import unpack_text
from storage import RenderStore
from supergen_dask import worker_models

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# where the diffusers pipelines run: the card of this process (the workers compute on theirs)
DEVICE = "cuda"
DTYPE = "bfloat16"  # the renders' and the pipelines' denoisers
# Each step's latents are compared as tests/gpu/test_gpu_render.py's one-tile test compares the
# last: by their relative L2 difference, under its 2e-2. Both sides run bf16 forwards: the render
# runs the two guidance branches as one batch of two where Wan's and HunyuanVideo's pipelines
# run two batches of one, combines them in float32 where those combine bf16 outputs, and hands
# LTX's transformer its packed tokens in another memory layout; the last bits differ and the
# difference grows over the steps. Measured on a CPU in bf16 (these tests, their GPU parts
# swapped for the CPU's): at most 9.6e-3 for Wan, 8.9e-3 for HunyuanVideo, 5.2e-3 for LTX.
# What bf16 tells apart on these random-weight models is coarse. On the same CPU, the pipeline
# handed another picture came out 5.0e-2 to 1.6e-1 away for CogVideoX and HunyuanVideo I2V (over
# their tolerances) but 1.2e-2 for Wan's I2V models (under), and a 10% smaller guidance scale
# under every family's tolerance. The exact oracles are the float32 CPU tests (1e-5); these show
# that the bf16 path on a card stays within bf16's noise of the pipeline's.
REL_TOL = 2e-2
# CogVideoX's pipelines also round their latents to bf16, the start and after every step (their
# model input is the latents as they are, so they cannot be handed back in float32 as
# HunyuanVideo's are), which the render keeps in float32: 2.1e-2 after 4 steps on a CPU in bf16
COGVIDEOX_REL_TOL = 4e-2


# -- the families and modes ------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One family and mode: its tiny model, the CPU oracle test's native render, and its oracle."""

    save: Callable[[Path], Path]  # builds the tiny model's directory at the path given
    native: tuple[int, int]  # the tiny model's native (height, width)
    frames: int
    steps: int
    guidance: float
    oracle: Callable  # (case, model_dir, result, picture, monkeypatch) -> the pipeline's steps
    image: bool = False
    spec: dict = field(default_factory=dict)  # more RenderSpec fields
    tolerance: float = REL_TOL  # of each step's relative L2 difference from the pipeline's


def _wan(variant: str) -> Callable[[Path], Path]:
    def save(path: Path) -> Path:
        from pipelines.wan import save_tiny_pipeline

        native = (128, 128) if variant.startswith("2.2-ti2v") else (64, 64)
        return save_tiny_pipeline(path, variant=variant, native=native)

    return save


def _cog(image: bool) -> Callable[[Path], Path]:
    def save(path: Path) -> Path:
        from pipelines.cogvideox import save_tiny_pipeline

        return save_tiny_pipeline(path, image=image)

    return save


def _hunyuan(image: str | None) -> Callable[[Path], Path]:
    def save(path: Path) -> Path:
        from pipelines.hunyuan import save_tiny_pipeline

        return save_tiny_pipeline(path, native=(32, 32), image=image)

    return save


def _ltx(image: bool) -> Callable[[Path], Path]:
    def save(path: Path) -> Path:
        from pipelines.ltx import save_tiny_pipeline

        return save_tiny_pipeline(path, image=image)

    return save


# -- the oracles: each family's diffusers pipeline in bf16 on this process's card ------------------
def _dtype() -> torch.dtype:
    return getattr(torch, DTYPE)


def _pipeline(cls, model_dir: Path, **components):
    """``cls`` from ``model_dir`` in ``DTYPE`` on ``DEVICE``, with the renderer's own VAE (float32,
    as ``pipelines.*.load_directory`` loads it): only the image-to-video pipelines use it here
    (the image's latent), and a bf16 one would encode another condition than the render's."""
    vae = worker_models.get_backend(str(model_dir), DTYPE).vae
    return cls.from_pretrained(str(model_dir), torch_dtype=_dtype(), vae=vae, **components).to(DEVICE)


def _collect(pipe, float32_latents: bool = False, **call) -> list[torch.Tensor]:
    """Run a diffusers pipeline on ``DEVICE``, returning its latents after every step (float32,
    in CPU memory); ``float32_latents``: handing them back to the pipeline in float32."""
    seen: list[torch.Tensor] = []

    def keep(_pipe, _i, _t, kwargs):
        latents = kwargs["latents"]
        seen.append(latents.detach().float().cpu())
        return {"latents": latents.float()} if float32_latents else {}

    with torch.no_grad():
        pipe(
            callback_on_step_end=keep,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="latent",
            **call,
        )
    return seen


def _embeds(result) -> tuple[np.ndarray, list[np.ndarray], torch.Tensor, torch.Tensor]:
    """``(start, our steps, neg, pos)``: the stored start and steps ``(F, C, h, w)``, the stored
    prompt embeddings as batches of one."""
    start, ours, (neg, pos) = stored_steps(result)
    return start, ours, torch.from_numpy(neg)[None], torch.from_numpy(pos)[None]


def _image_canvas(result) -> torch.Tensor:
    """The refine stage's stored image condition as ``(1, C, F, h, w)``."""
    store = RenderStore.open(str(result.store_path), mode="r")
    return torch.from_numpy(store.read_canvas("refine", "image", None)).permute(1, 0, 2, 3)[None]


def _to(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return x.to(DEVICE, dtype)


def _wan_oracle(case: Case, model_dir: Path, result, picture: Path, monkeypatch) -> list[np.ndarray]:
    from diffusers import WanImageToVideoPipeline, WanPipeline

    start, _, neg, pos = _embeds(result)
    spec, plan = result.plan.spec, result.plan
    components, call = {}, {}
    cls = WanPipeline
    if case.image:
        cls = WanImageToVideoPipeline
        call["image"] = Image.open(picture)
        if (model_dir / "image_encoder").is_dir():  # 2.1 I2V: CLIP in float32, as the backend has it
            from transformers import CLIPVisionModel

            components["image_encoder"] = CLIPVisionModel.from_pretrained(
                str(model_dir), subfolder="image_encoder", dtype=torch.float32
            )
    pipe = _pipeline(cls, model_dir, **components)
    theirs = _collect(
        pipe,
        prompt_embeds=_to(pos, _dtype()),
        negative_prompt_embeds=_to(neg, _dtype()),
        latents=_to(torch.from_numpy(start).permute(1, 0, 2, 3)[None]),  # float32, as the pipeline's
        num_inference_steps=spec.num_inference_steps,
        guidance_scale=spec.guidance_scale,
        height=spec.height,
        width=spec.width,
        num_frames=spec.num_frames,
        **call,
    )
    if plan.model.image_frozen:  # TI2V-5B: the pipeline fixes the image's cells before decoding
        frozen = ImageCondition(_image_canvas(result), None, frozen=True)
        theirs = [frozen.freeze(t) for t in theirs]
    return [t[0].permute(1, 0, 2, 3).numpy() for t in theirs]


def _cog_oracle(case: Case, model_dir: Path, result, picture: Path, monkeypatch) -> list[np.ndarray]:
    from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline, CogVideoXPipeline

    start, _, neg, pos = _embeds(result)
    spec = result.plan.spec
    call = {}
    pipe = _pipeline(CogVideoXImageToVideoPipeline if case.image else CogVideoXPipeline, model_dir)
    if case.image:
        import diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video as cog_i2v

        call["image"] = Image.open(picture)
        # the pipeline samples the image's latent distribution; the backend takes its mode
        original = cog_i2v.retrieve_latents
        monkeypatch.setattr(
            cog_i2v, "retrieve_latents", lambda out, generator=None: original(out, sample_mode="argmax")
        )
        # it hands the VAE the picture in the prompt's dtype: the float32 VAE takes it in float32
        encode = pipe.vae.encode
        monkeypatch.setattr(pipe.vae, "encode", lambda x, *a, **kw: encode(x.float(), *a, **kw))
    pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config)
    theirs = _collect(
        pipe,
        prompt_embeds=_to(pos, _dtype()),
        negative_prompt_embeds=_to(neg, _dtype()),
        # (B, F, C, H, W): the stored layout already; in the prompt's dtype, as the pipeline keeps them
        latents=_to(torch.from_numpy(start)[None], _dtype()),
        num_inference_steps=spec.num_inference_steps,
        guidance_scale=spec.guidance_scale,
        height=spec.height,
        width=spec.width,
        num_frames=spec.num_frames,
        **call,
    )
    return [t[0].numpy() for t in theirs]


def _hunyuan_oracle(case: Case, model_dir: Path, result, picture: Path, monkeypatch) -> list[np.ndarray]:
    from diffusers import HunyuanVideoImageToVideoPipeline, HunyuanVideoPipeline

    from pipelines.hunyuan import unpack_prompt

    start, _, neg, pos = _embeds(result)
    plan = result.plan
    spec = plan.spec
    pipe = _pipeline(HunyuanVideoImageToVideoPipeline if case.image else HunyuanVideoPipeline, model_dir)
    pooled_dim = pipe.transformer.config.pooled_projection_dim
    # the stored prompts as the render hands them to its transformer (zero-padded, mask 0 there)
    text, mask, pooled, _ = (_to(a, _dtype()) for a in unpack_prompt(pos, pooled_dim))
    ntext, nmask, npooled, _ = (_to(a, _dtype()) for a in unpack_prompt(neg, pooled_dim))
    x0 = torch.from_numpy(start).permute(1, 0, 2, 3)[None]
    call = {}
    frames = spec.num_frames
    if case.image:
        call["image"] = Image.open(picture)
        # the pipeline starts from 0.999 * latents + 0.001 * image latent; the render from its
        # start: hand it the latents this blend turns into the render's start
        cond = _image_canvas(result)
        c = plan.model.latent_channels
        image_latent = cond[:, 1:, :1] if plan.model.image_frozen else cond[:, :c, :1]
        t = torch.tensor([0.999])
        x0 = (x0 - image_latent * (1 - t)) / t
        if not plan.model.image_frozen:  # latent_concat drops the video of the first latent frame
            frames += plan.model.temporal_factor
    theirs = _collect(
        pipe,
        # its scheduler hands the latents back in the model output's dtype (bf16), and the next
        # step's timestep is cast to theirs: bookkeeping of the pipeline, not the model's numerics
        # (the render keeps both in float32, as WanPipeline and LTXPipeline do). The pipeline casts
        # its model input itself, so float32 latents are safe: 1.3e-2 -> 8.9e-3 after 3 steps
        # (1.7e-2 -> 7.6e-3 for latent_concat) on a CPU in bf16
        float32_latents=True,
        prompt_embeds=text,
        prompt_attention_mask=mask,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=ntext,
        negative_prompt_attention_mask=nmask,
        negative_pooled_prompt_embeds=npooled,
        latents=_to(x0),
        num_inference_steps=spec.num_inference_steps,
        guidance_scale=spec.embedded_guidance_scale or 1.0,
        true_cfg_scale=spec.guidance_scale,
        height=spec.height,
        width=spec.width,
        num_frames=frames,
        **call,
    )
    return [t[0].permute(1, 0, 2, 3).numpy() for t in theirs]


def _ltx_oracle(case: Case, model_dir: Path, result, picture: Path, monkeypatch) -> list[np.ndarray]:
    from diffusers import LTXImageToVideoPipeline, LTXPipeline

    from pipelines.ltx import pack_latents, unpack_latents

    start, _, neg, pos = _embeds(result)
    spec = result.plan.spec
    pos_text, pos_mask, _ = unpack_text(pos, has_mask=True)
    neg_text, neg_mask, _ = unpack_text(neg, has_mask=True)
    x0 = torch.from_numpy(start).permute(1, 0, 2, 3)[None]
    call = {}
    if case.image:
        # given latents whose first frame is the image's, the pipeline keeps that frame at
        # timestep 0 and never steps it
        call["image"] = Image.open(picture)
        x0 = ImageCondition(_image_canvas(result), None, frozen=True).freeze(x0)
    pipe = _pipeline(LTXImageToVideoPipeline if case.image else LTXPipeline, model_dir)
    theirs = _collect(
        pipe,
        prompt_embeds=_to(pos_text, _dtype()),  # the model input's dtype is the prompt's
        prompt_attention_mask=_to(pos_mask),
        negative_prompt_embeds=_to(neg_text, _dtype()),
        negative_prompt_attention_mask=_to(neg_mask),
        latents=_to(pack_latents(x0)),
        num_inference_steps=spec.num_inference_steps,
        guidance_scale=spec.guidance_scale,
        height=spec.height,
        width=spec.width,
        num_frames=spec.num_frames,
        frame_rate=25,
        **call,
    )
    frames, _, h, w = start.shape
    return [unpack_latents(t, frames, h, w)[0].permute(1, 0, 2, 3).numpy() for t in theirs]


# The CPU oracle tests' models, sizes, frames, steps and guidance (tests/test_wan_versions.py,
# test_render_image_to_video.py, test_cogvideox.py, test_hunyuan.py, test_hunyuan_i2v.py,
# test_ltx.py); Wan 2.1 text-to-video is tests/gpu/test_gpu_render.py's.
CASES: dict[str, Case] = {
    "wan2.1-i2v": Case(_wan("2.1-i2v"), (64, 64), 9, 4, 5.0, _wan_oracle, image=True),
    # 6 steps: the high-noise expert takes the first, the low-noise one the rest
    "wan2.2-a14b": Case(_wan("2.2-a14b"), (64, 64), 9, 6, 5.0, _wan_oracle),
    "wan2.2-ti2v": Case(_wan("2.2-ti2v"), (128, 128), 9, 4, 5.0, _wan_oracle),
    "wan2.2-ti2v-i2v": Case(_wan("2.2-ti2v-i2v"), (128, 128), 9, 4, 5.0, _wan_oracle, image=True),
    "cogvideox1.5": Case(_cog(False), (64, 64), 9, 4, 6.0, _cog_oracle, tolerance=COGVIDEOX_REL_TOL),
    "cogvideox1.5-i2v": Case(
        _cog(True), (64, 64), 9, 4, 6.0, _cog_oracle, image=True, tolerance=COGVIDEOX_REL_TOL
    ),
    # true CFG and the embedded guidance at once
    "hunyuan": Case(
        _hunyuan(None),
        (32, 32),
        5,
        3,
        3.0,
        _hunyuan_oracle,
        spec=dict(negative_prompt="blue square", embedded_guidance_scale=4.0),
    ),
    "hunyuan-i2v-concat": Case(
        _hunyuan("latent_concat"),
        (32, 32),
        5,
        3,
        3.0,
        _hunyuan_oracle,
        image=True,
        spec=dict(negative_prompt="blue square"),
    ),
    "hunyuan-i2v-replace": Case(
        _hunyuan("token_replace"),
        (32, 32),
        5,
        3,
        3.0,
        _hunyuan_oracle,
        image=True,
        spec=dict(negative_prompt="blue square", embedded_guidance_scale=4.0),
    ),
    "ltx": Case(_ltx(False), (128, 128), 9, 4, 3.0, _ltx_oracle),
    "ltx-i2v": Case(_ltx(True), (128, 128), 9, 4, 3.0, _ltx_oracle, image=True),
}


# -- shared state: the tiny models, the picture, one cluster per GPU count -------------------------


def _gpu_count() -> int:
    return torch.cuda.device_count()


def _cards(result) -> set[str]:
    """The physical cards (UUIDs) the refinement's tiles ran on, from the tile stats."""
    store = RenderStore.open(str(result.store_path), mode="r")
    names = store.attrs["sessions"][-1]["gpus"]
    return {names[str(int(c))] for c in np.unique(store.tile_stats("refine")["gpu"])}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Each case's tiny model directory, built when a test first asks for it."""
    return {"root": tmp_path_factory.mktemp("models")}


def _model(made: dict[str, Path], name: str) -> Path:
    if name not in made:
        made[name] = CASES[name].save(made["root"] / name)
    return made[name]


def _picture(path: Path, size: tuple[int, int]) -> Path:
    """Smooth enough that a resize means something, with detail everywhere."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (max(size[0] // 4, 8), max(size[1] // 4, 8), 3), dtype=np.uint8)
    Image.fromarray(small).resize(size[::-1], Image.BICUBIC).save(path)
    return path


def _spec(name: str, model_dir: Path, picture: Path, scale: int = 1) -> sd.RenderSpec:
    """The case's native render (one tile, k = T, no shift, every step kept in float32) in
    ``DTYPE``, at ``scale`` times its native size."""
    case = CASES[name]
    h, w = case.native
    return native_spec(
        model_dir,
        steps=case.steps,
        guidance=case.guidance,
        frames=case.frames,
        size=(scale * h, scale * w),
        dtype=DTYPE,
        image=str(picture) if case.image else None,
        **case.spec,
    )


def _relative_differences(ours: list[np.ndarray], theirs: list[np.ndarray]) -> list[float]:
    """Each step's relative L2 difference ``|ours - theirs| / |theirs|``."""
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    out = []
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.shape == b.shape, f"step {i}: {a.shape} vs {b.shape}"
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        assert np.isfinite(a64).all() and np.isfinite(b64).all(), f"step {i} is not finite"
        out.append(float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64)))
    return out


# -- the tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_native_render_equals_the_diffusers_pipeline_in_bf16(tmp_path, monkeypatch, models, name):
    """A render at the model's native size with k = T and no shift is one tile: each of its steps'
    latents (stored in float32, unrounded) must be those of the family's own diffusers pipeline
    run on the same card in bf16 from the same start, prompt embeddings, image, scheduler and
    guidance."""
    case = CASES[name]
    model_dir = _model(models, name)
    picture = _picture(tmp_path / "first.png", case.native)
    spec = _spec(name, model_dir, picture)
    result = render_on(spec, tmp_path / "r", 1)
    plan = result.plan
    assert plan.sketch is None and plan.refine.grid.n_tiles == 1
    assert len(plan.refine.steps) == case.steps
    if name == "wan2.2-a14b":  # both experts take part
        ts = plan.refine.timesteps
        assert min(ts) < 875 <= max(ts), ts
    ours = stored_steps(result)[1]
    theirs = case.oracle(case, model_dir, result, picture, monkeypatch)
    rel = _relative_differences(ours, theirs)
    assert max(rel) < case.tolerance, "relative L2 difference per step: " + ", ".join(f"{r:.2e}" for r in rel)


@pytest.mark.parametrize("name", list(CASES))
def test_2x_render_is_the_same_on_two_gpus_as_on_one(tmp_path, models, name):
    """A 2x render (a sketch, then 2x2 tiles shifting every step) on two dask-cuda workers: the
    refinement's tiles run on both cards, and every stored array is what one card computes.
    (Where the sketch's two guidance branches run is Dask's choice: nothing places them apart,
    and with one sketch step they shared one worker in 2 to 5 of these 11 renders on a CPU.)"""
    if _gpu_count() < 2:
        pytest.skip(f"needs two GPUs, {_gpu_count()} visible")
    case = CASES[name]
    picture = _picture(tmp_path / "first.png", case.native)
    # 3 steps, the last 2 tiled: enough for a sketch, an upscale and a shifted refinement
    spec = _spec(name, _model(models, name), picture, scale=2).replace(
        num_inference_steps=3, refine_steps=2, shift=sd.ShiftSettings(), output=sd.OutputSettings()
    )
    with small_margins():
        one = render_on(spec, tmp_path / "one", 1)
        two = render_on(spec, tmp_path / "two", 2)
    plan = one.plan
    assert plan.sketch is not None and plan.refine.grid.n_tiles == 4
    assert plan.refine.shift.stride_y > 0 and plan.refine.offset(plan.refine.last) != (0, 0)
    assert len(_cards(one)) == 1 and len(_cards(two)) == 2, (_cards(one), _cards(two))
    a, b = store_arrays(one.store_path), store_arrays(two.store_path)
    assert sorted(a) == sorted(b)
    differ = array_differences(a, b)
    worst = max((d for d, _ in differ.values()), default=0.0)
    # the same kernels on two cards of one kind: expected bit-identical; allow bf16 noise if not.
    # The message names each array that differs, its largest difference and first differing step
    assert worst <= 1e-2, differ
    if worst == 0:
        assert_renders_identical(one.render_dir, two.render_dir)
