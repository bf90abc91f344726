"""The real-size random presets of CogVideoX1.5-5B and HunyuanVideo (issue 12's GPU must-show),
checked on a CPU without ever holding their weights: the models are built on the ``meta`` device
(HunyuanVideo's 12.8B weights are 51 GB in float32), plans and dry runs read only configs, and
the loaders run on scaled-down configs."""

from __future__ import annotations

import dask.config
import pytest
import torch

import supergen_dask as sd
from pipelines import available_models, cogvideox, hunyuan, load_backend, model_info, transformer_config, wan
from pipelines.base import cast_weights, drawn_on_device
from pipelines.hunyuan import unpack_prompt
from supergen_dask.cli import main
from supergen_dask.estimate import LimitError

COG = "random-cogvideox1.5-5b-shape"
HY = "random-hunyuanvideo-shape"
WAN14 = "random-wan2.1-14b-shape"


def test_presets_are_listed_with_the_real_checkpoints_facts(capsys):
    assert {COG, HY, WAN14} <= set(available_models())
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"{COG}: native 1360x768, 81 frames" in out and f"{HY}: native 1280x720, 129 frames" in out
    assert f"{WAN14}: native 1280x720, 81 frames" in out

    cog = model_info(COG)
    assert (cog.family, cog.native_width, cog.native_height, cog.native_frames, cog.fps) == (
        "cogvideox",
        1360,
        768,
        81,
        16,
    )
    # 1.5's frame rule: 1 + 4k frames whose latent frames plus the padding frame are even
    assert cog.frames_ok(81) and cog.frames_ok(49) and not cog.frames_ok(85)
    assert (cog.latent_channels, cog.spatial_factor, cog.patch_spatial) == (16, 8, 2)
    assert (cog.latent_frame_multiple, cog.latent_pad_frames) == (2, 1)
    assert (cog.text_tokens, cog.text_embed_dim) == (226, 4096)  # T5, max_sequence_length 226
    assert cog.scheduler_class == "CogVideoXDDIMScheduler" and cog.default_guidance == 6.0

    hy = model_info(HY)
    assert (hy.family, hy.native_width, hy.native_height, hy.native_frames, hy.fps) == (
        "hunyuan",
        1280,
        720,
        129,
        24,
    )
    assert hy.frames_ok(129) and hy.frames_ok(33) and not hy.frames_ok(32)
    assert (hy.latent_channels, hy.spatial_factor, hy.patch_spatial) == (16, 8, 2)
    # Llama's 256 tokens x 4096, packed with the mask column and the CLIP pooled row
    assert (hy.text_tokens, hy.text_embed_dim) == (257, 4097)
    assert hy.embedded_guidance == 6.0 and hy.default_guidance == 1.0
    assert hy.scheduler_class == "FlowMatchSigmasScheduler" and hy.scheduler_config["shift"] == 7.0


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# what CogVideoX1.5-5B's VAE sets apart from AutoencoderKLCogVideoX's defaults (CogVideoX-2B's)
_COG_VAE_NOT_DEFAULT = {"scaling_factor", "invert_scale_latents"}


def _defaults(cls, config: dict, but: set = frozenset()) -> bool:
    """Whether ``config`` is ``cls``'s defaults, except the keys ``but``."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    same = {k for k, v in config.items() if list(_seq(v)) == list(_seq(params[k].default))}
    return set(config) - same == set(but)


def _seq(v):
    return v if isinstance(v, list | tuple) else [v]


def test_the_models_have_the_published_sizes_built_on_meta():
    from diffusers import (
        AutoencoderKLCogVideoX,
        AutoencoderKLHunyuanVideo,
        CogVideoXTransformer3DModel,
        HunyuanVideoTransformer3DModel,
        WanTransformer3DModel,
    )

    with torch.device("meta"):  # shapes only: no memory
        cog_t = CogVideoXTransformer3DModel(**transformer_config(COG))
        cog_v = AutoencoderKLCogVideoX(**cogvideox.COGVIDEOX15_5B_VAE_CONFIG)
        hy_t = HunyuanVideoTransformer3DModel(**transformer_config(HY))
        hy_v = AutoencoderKLHunyuanVideo(**hunyuan.HUNYUAN_VAE_CONFIG)
    assert next(cog_t.parameters()).is_meta
    # CogVideoX1.5-5B's transformer: 5,570,676,352 weights (the "5B"; 11.1 GB in bf16)
    assert _params(cog_t) == pytest.approx(5.57e9, rel=0.005)
    # HunyuanVideo's transformer: 12,821,012,544 weights (the "13B"; 25.6 GB in bf16)
    assert _params(hy_t) == pytest.approx(12.82e9, rel=0.005)
    assert _defaults(HunyuanVideoTransformer3DModel, hunyuan.HUNYUAN_13B_TRANSFORMER_CONFIG)
    # the VAEs: CogVideoX's 215.6M weights (diffusers' default shape), HunyuanVideo's 246.5M
    assert _params(cog_v) == pytest.approx(215.6e6, rel=0.005)
    assert _defaults(AutoencoderKLCogVideoX, cogvideox.COGVIDEOX15_5B_VAE_CONFIG, but=_COG_VAE_NOT_DEFAULT)
    assert _defaults(AutoencoderKLHunyuanVideo, hunyuan.HUNYUAN_VAE_CONFIG)
    assert _params(hy_v) == pytest.approx(246.5e6, rel=0.005)
    # Wan2.1-T2V-14B's transformer: 14.29B weights (28.6 GB in bf16)
    with torch.device("meta"):
        wan_t = WanTransformer3DModel(**transformer_config(WAN14))
    assert _params(wan_t) == pytest.approx(14.29e9, rel=0.005)
    assert wan_t.config.num_attention_heads * wan_t.config.attention_head_dim == 5120
    assert cog_t.config.max_text_seq_length == 226 and cog_t.config.patch_size_t == 2
    assert cog_v.config.scaling_factor == 0.7 and cog_v.config.invert_scale_latents
    assert hy_t.config.guidance_embeds and hy_t.config.pooled_projection_dim == 768


def _plan_2k(model: str, frames: int):
    spec = sd.RenderSpec(
        prompt="a red circle moving right",
        model=model,
        height=1440,
        width=2560,
        num_frames=frames,
        dtype="bfloat16",
        num_inference_steps=6,
        refine_steps=3,
    )
    return sd.plan_render(spec)


@pytest.mark.parametrize(
    "model, frames, native",
    [(COG, 81, (768, 1360)), (HY, 129, (720, 1280)), (WAN14, 81, (720, 1280))],
)
def test_a_2k_plan_is_tiled_with_a_native_sketch_and_an_estimate(model, frames, native):
    with dask.config.set({"supergen.limits.max-worker-memory": "64GiB"}):  # not this machine's
        plan = _plan_2k(model, frames)
    assert plan.sketch_pixel_size == native
    g = plan.refine.grid
    assert g.n_tiles == 4 and (g.tile_h * 8, g.tile_w * 8) == (720, 1280)  # 2x2 tiles of 720p
    est = plan.estimate()
    assert est.weights_bytes is None  # built in code: no weight files
    gpu = est.gpu
    assert "H200" in gpu.card and gpu.seconds is not None
    # the refinement tile's tokens: latent frames (over the temporal patch) x 80 x 45 patches
    assert gpu.tile_tokens == -(-plan.latent_frames // (2 if model == COG else 1)) * 80 * 45
    assert 10 * 2**30 < gpu.peak_bytes < 80 * 2**30  # bf16 weights plus activations: one card's
    assert "denoising" in plan.summary() and "GPU memory per worker" in plan.summary()


def test_a_small_machine_is_refused_with_the_setting_to_raise():
    # the upscale task of HunyuanVideo at 2K, 129 frames holds ~19 GiB of host memory
    with (
        dask.config.set({"supergen.limits.max-worker-memory": "16GiB"}),
        pytest.raises(LimitError, match="max-worker-memory.*--force"),
    ):
        _plan_2k(HY, 129)


@pytest.mark.parametrize("model, frames", [(COG, 81), (HY, 129), (WAN14, 81)])
def test_dry_run_prints_the_2k_plan_without_loading_weights(model, frames, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run loaded the model")

    monkeypatch.setattr("pipelines._load_backend", refuse)
    argv = ["render", "--model", model, "--prompt", "a red circle", "--height", "1440", "--width", "2560"]
    argv += ["--num-frames", str(frames), "--num-inference-steps", "6", "--refine-steps", "3"]
    argv += ["--dtype", "bfloat16", "--dry-run", "--force", "--output-dir", str(tmp_path / "r")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"model {model}" in out and "2x2 grid of 1280x720 px tiles" in out
    assert "GPU memory per worker" in out and "an estimate for one NVIDIA H200 in bf16" in out
    assert not (tmp_path / "r").exists()


def test_prompts_have_the_real_encoders_shapes():
    pos, neg = load_backend(COG).encode_prompt("a red circle moving right", "")
    assert pos.shape == neg.shape == (226, 4096) and not torch.equal(pos, neg)

    b = load_backend(HY)
    pos, neg = b.encode_prompt("a red circle moving right", "", embedded_guidance_scale=4.5)
    assert pos.shape == neg.shape == (257, 4097)
    text, mask, pooled, guidance = unpack_prompt(torch.stack([neg, pos]), pooled_dim=768)
    assert text.shape == (2, 256, 4096) and pooled.shape == (2, 768)
    assert guidance.tolist() == [4.5, 4.5]
    assert mask[1].sum() == 6 and mask[0].sum() == 1  # the words and an end token, then padding
    assert unpack_prompt(b.encode_prompt("x", "")[0][None], 768)[3].tolist() == [6.0]
    assert b._components.keys() == {"text"}  # the transformer was never built


def test_weights_drawn_in_the_target_dtype_equal_the_float32_draw_cast():
    """The presets' one-weight-at-a-time draw gives the Wan preset's draw-then-cast weights,
    float32 modules (Wan's ``_keep_in_fp32_modules``) included."""
    from diffusers import WanTransformer3DModel

    build = lambda: WanTransformer3DModel(**wan.TINY_TRANSFORMER_CONFIG)  # noqa: E731
    a = cast_weights(drawn_on_device(build, 1, "cpu"), "cpu", torch.bfloat16)
    b = cast_weights(drawn_on_device(build, 1, "cpu", torch.bfloat16), "cpu", torch.bfloat16)
    dtypes = set()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert p.dtype == q.dtype and torch.equal(p, q), n
        dtypes.add(p.dtype)
    assert dtypes == {torch.bfloat16, torch.float32}
    assert a.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32


@pytest.mark.parametrize("family", ["cogvideox", "hunyuan"])
def test_the_preset_loaders_work_on_a_scaled_down_config(family, monkeypatch):
    """``load_preset``'s own code path (CPU init, text, predict, VAE) on the tiny configs."""
    module = {"cogvideox": cogvideox, "hunyuan": hunyuan}[family]
    name = next(iter(module._PRESETS))
    small = dict(
        module._PRESETS[name], transformer=module.TINY_TRANSFORMER_CONFIG, vae=module.TINY_VAE_CONFIG
    )
    monkeypatch.setitem(module._PRESETS, "small", small)
    b = load_backend("small")
    info = b.info
    assert info.text_embed_dim in (32, 17) and info.latent_channels == 4
    pos, neg = b.encode_prompt("a red circle", "")
    assert pos.shape == (info.text_tokens, info.text_embed_dim)
    x = torch.randn(2, 4, info.latent_frames(9), 4, 4)
    out = b.predict(x, torch.tensor([500.0, 500.0]), torch.stack([neg, pos]), offset=(2, 2))
    assert out.shape == x.shape and torch.isfinite(out).all()
    video = b.vae_decode(out[:1])
    assert video.shape == (1, 3, 9, 32, 32) and torch.isfinite(video).all()
    again = load_backend("small").transformer
    for (n, p), (_, q) in zip(b.transformer.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(p, q), n  # seeded: the same weights in every process
