"""CogVideoX family (1.5 and 1.0-5B text-to-video; 1.5 image-to-video through the backend):
``CogVideoXTransformer3DModel`` + ``AutoencoderKLCogVideoX`` + T5, from a local diffusers directory.

What differs from Wan, and how the backend hides it from the renderer:
- **Layout**: the transformer takes ``(B, F, C, H, W)``; ``predict`` permutes from and to the
  renderer's ``(B, C, F, h, w)``.
- **Positions**: rotary embeddings arrive through ``image_rotary_emb`` and rotate only the video
  tokens, while text and video tokens attend to each other in one joint attention. The angle
  between a video query and an (unrotated) text key depends on the video token's *absolute*
  position, so, unlike Wan, a tile's output depends on where its positions start
  (tests/test_cogvideox.py measures it). ``predict`` gives each tile its canvas positions: the
  rotary tables start at ``offset`` (in patches, fractional when a shift is not a whole patch) and
  run on without wrapping, so a tile's positions are contiguous like its content.
- **Frames** (1.5): the transformer patches 2 latent frames together; the pipeline pads an odd
  latent count with one throw-away noise frame in front and drops it before decoding. The canvas
  here carries that frame too (``latent_pad_frames``): ``vae_decode`` drops it, ``vae_encode``
  puts a copy of the first latent frame there.
- **Scheduler**: checkpoints name ``CogVideoXDPMScheduler``, which draws noise inside ``step()``
  and keeps the previous x0 outside the scheduler: not tileable. The backend samples with
  ``CogVideoXDDIMScheduler`` from the same config (v-prediction, the same noise schedule,
  deterministic; the pipeline's other supported scheduler).
- **Normalisation**: latents are the VAE's posterior mode times ``scaling_factor``.
- **Image-to-video** (``CogVideoXImageToVideoPipeline``): ``encode_image`` gives the image's
  latent in the first latent frame and zeros elsewhere, concatenated to a tile's channels by
  ``predict`` (plus 1.5's constant ``ofs``); the renderer hands each tile its crop (``--image``).
- **Preset** ``random-cogvideox1.5-5b-shape``: random weights in the exact shape of
  CogVideoX1.5-5B's transformer and VAE, with hashed prompt embeddings of T5's shape (for timing on
  a GPU: random weights cost what real ones cost); its ModelInfo is what ``directory_info`` gives
  for the real checkpoint.
- **Not supported**: ``use_dynamic_cfg`` (a guidance scale that changes every step) and
  CogVideoX-2B's absolute sincos position embeddings (refused at load).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipelines.base import (
    FamilyDefaults,
    ImageCondition,
    LazyBackend,
    ModelDirectoryError,
    ModelInfo,
    cast_weights,
    directory_revision,
    load_component,
    random_vae,
    random_weights,
    read_overrides,
)
from pipelines.text import HashTextEncoder

__all__ = [
    "DEFAULTS",
    "TINY_TRANSFORMER_CONFIG",
    "TINY_VAE_CONFIG",
    "CogVideoXBackend",
    "directory_info",
    "load_directory",
    "load_preset",
    "preset_info",
    "preset_names",
    "preset_transformer_config",
    "rotary_tables",
    "save_tiny_pipeline",
]

DEFAULTS = FamilyDefaults(
    family="cogvideox",
    pipelines=("CogVideoXPipeline", "CogVideoXImageToVideoPipeline"),
    components=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    native_height=768,
    native_width=1360,
    native_frames=81,
    fps=16,
    default_steps=50,
    default_guidance=6.0,
    default_refine_fraction=0.9,
    temporal_factor=4,
    latent_frame_multiple=2,
    latent_pad_frames=1,
    text_tokens=226,
    guidance_note="use_dynamic_cfg not supported (constant guidance_scale)",
    description="CogVideoX 1.5 T2V (1.0-5B: 720x480, 49 frames, 8 fps); sampled with CogVideoXDDIMScheduler",
)

# CogVideoX 1.0 (no temporal patch): 720x480, 49 frames, 8 fps, no padding frame.
_V10 = dict(native_height=480, native_width=720, native_frames=49, fps=8)

# The 1.5-style tiny config of diffusers' model tests (rotary positions, temporal patch 2).
TINY_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    time_embed_dim=2,
    text_embed_dim=32,
    num_layers=2,
    sample_width=8,
    sample_height=8,
    sample_frames=9,
    patch_size=2,
    patch_size_t=2,
    temporal_compression_ratio=4,
    max_text_seq_length=16,
    use_rotary_positional_embeddings=True,
)
TINY_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["CogVideoXDownBlock3D"] * 4,
    up_block_types=["CogVideoXUpBlock3D"] * 4,
    block_out_channels=(8, 8, 8, 8),
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=2,
    temporal_compression_ratio=4,
)
# CogVideoX-5b / 1.5 scheduler settings (v-prediction, zero-SNR, trailing spacing)
SCHEDULER_CONFIG: dict[str, Any] = dict(
    beta_end=0.012,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    clip_sample=False,
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    set_alpha_to_one=True,
    snr_shift_scale=1.0,
    steps_offset=0,
    timestep_spacing="trailing",
)

# CogVideoX1.5-5B's transformer/config.json (diffusers' conversion of the 1.5 checkpoint: 48 heads
# of 64, 42 layers, temporal patch 2, rotary positions, no patch bias, 300x300 sample grid)
COGVIDEOX15_5B_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    activation_fn="gelu-approximate",
    attention_bias=True,
    attention_head_dim=64,
    dropout=0.0,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=16,
    max_text_seq_length=226,
    norm_elementwise_affine=True,
    norm_eps=1e-5,
    num_attention_heads=48,
    num_layers=42,
    out_channels=16,
    patch_bias=False,
    patch_size=2,
    patch_size_t=2,
    sample_frames=81,
    sample_height=300,
    sample_width=300,
    spatial_interpolation_scale=1.875,
    temporal_compression_ratio=4,
    temporal_interpolation_scale=1.0,
    text_embed_dim=4096,
    time_embed_dim=512,
    timestep_activation_fn="silu",
    use_learned_positional_embeddings=False,
    use_rotary_positional_embeddings=True,
)
# its vae/config.json: AutoencoderKLCogVideoX's defaults (4 blocks of 128, 256, 256, 512 channels,
# 3 layers each, 16 latent channels) with the 5B scaling factor and 1.5's inverted latent scale
COGVIDEOX15_5B_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["CogVideoXDownBlock3D"] * 4,
    up_block_types=["CogVideoXUpBlock3D"] * 4,
    block_out_channels=[128, 256, 256, 512],
    latent_channels=16,
    layers_per_block=3,
    act_fn="silu",
    norm_eps=1e-6,
    norm_num_groups=32,
    temporal_compression_ratio=4,
    sample_height=480,
    sample_width=720,
    scaling_factor=0.7,
    force_upcast=True,
    use_quant_conv=False,
    use_post_quant_conv=False,
    invert_scale_latents=True,
)

_PRESETS: dict[str, dict[str, Any]] = {
    "random-cogvideox1.5-5b-shape": dict(
        transformer=COGVIDEOX15_5B_TRANSFORMER_CONFIG,
        vae=COGVIDEOX15_5B_VAE_CONFIG,
        scheduler=dict(SCHEDULER_CONFIG, _class_name="CogVideoXDPMScheduler"),  # as the checkpoint's
        description=(
            "random weights in the shape of CogVideoX1.5-5B (timing only): real-size transformer "
            "and VAE, hashed prompt embeddings"
        ),
    ),
}


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def preset_transformer_config(name: str) -> dict[str, Any]:
    """The transformer config a preset builds its model from (a copy)."""
    return dict(_PRESETS[name]["transformer"])


def preset_info(name: str) -> ModelInfo:
    """What ``directory_info`` reads from the real checkpoint's configs (no ``supergen.json``)."""
    p = _PRESETS[name]
    return _info(name, p["transformer"], p["vae"], dict(p["scheduler"]), {"description": p["description"]})


def load_preset(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> CogVideoXBackend:
    """A random-weight preset, identical on every worker of one kind of device: on a GPU the
    transformer's weights are drawn there (``drawn_on_device``), in ``dtype`` from the start;
    elsewhere by the seeded default initialisers. Never load a real-size one on a CPU to test it:
    build it on the ``meta`` device (5.6B weights are 22 GB in float32)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    p = _PRESETS[name]
    info = preset_info(name)

    def transformer():
        build = lambda: CogVideoXTransformer3DModel(**p["transformer"])  # noqa: E731
        return cast_weights(random_weights(build, device, dtype), device, dtype)

    def vae():
        return random_vae(lambda: AutoencoderKLCogVideoX(**p["vae"]), device)

    def text():
        enc = HashTextEncoder(p["transformer"]["text_embed_dim"], info.text_tokens, seed=3)
        return lambda prompt, negative: (enc(prompt), enc(negative))

    return CogVideoXBackend(info, {"transformer": transformer, "vae": vae, "text": text}, device, dtype)


def rotary_tables(
    head_dim: int,
    frames: int,
    grid_h: int,
    grid_w: int,
    offset: tuple[float, float] = (0.0, 0.0),
    theta: float = 10000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CogVideoX's 3-D rotary ``(cos, sin)`` of shape ``(frames*grid_h*grid_w, head_dim)`` for
    positions starting at ``offset`` (patches). At offset 0 these are the pipeline's own tables
    (``get_3d_rotary_pos_embed``: 1.5's ``slice`` grid, and 1.0's ``linspace`` grid at its base size)."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    dim_t, dim_h, dim_w = head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3
    grid_t = torch.arange(frames, dtype=torch.float32)
    grid_y = torch.arange(grid_h, dtype=torch.float32) + float(offset[0])
    grid_x = torch.arange(grid_w, dtype=torch.float32) + float(offset[1])
    t = get_1d_rotary_pos_embed(dim_t, grid_t, theta=theta, use_real=True)
    h = get_1d_rotary_pos_embed(dim_h, grid_y, theta=theta, use_real=True)
    w = get_1d_rotary_pos_embed(dim_w, grid_x, theta=theta, use_real=True)

    def combine(ft, fh, fw):
        ft = ft[:, None, None, :].expand(-1, grid_h, grid_w, -1)
        fh = fh[None, :, None, :].expand(frames, -1, grid_w, -1)
        fw = fw[None, None, :, :].expand(frames, grid_h, -1, -1)
        return torch.cat([ft, fh, fw], dim=-1).reshape(frames * grid_h * grid_w, -1)

    return combine(t[0], h[0], w[0]), combine(t[1], h[1], w[1])


def _info(
    root: Path | str,
    transformer: dict,
    vae: dict,
    sched: dict,
    extra: dict,
    image: bool = False,
    revision: str = "",
) -> ModelInfo:
    """The ModelInfo of a CogVideoX model from its configs (``root`` names it)."""
    v15 = transformer.get("patch_size_t") is not None
    if not transformer.get("use_rotary_positional_embeddings", False):
        raise ModelDirectoryError(
            f"model directory {str(root)!r}: CogVideoX with absolute sincos position embeddings "
            "(CogVideoX-2B) is not supported for tiles; 1.0-5B and 1.5 (rotary) are"
        )
    if transformer.get("use_learned_positional_embeddings", False):
        raise ModelDirectoryError(
            f"model directory {str(root)!r}: learned position embeddings (CogVideoX-5B-I2V) only "
            "work at the training size and are not supported for tiles"
        )
    fields = DEFAULTS.overrides(extra if v15 else {**_V10, **extra})
    cls = sched.pop("_class_name", "CogVideoXDPMScheduler")
    if cls in ("CogVideoXDPMScheduler", "DDIMScheduler", "CogVideoXDDIMScheduler"):
        # same config, deterministic element-wise sampler (see the module docstring)
        cls = "CogVideoXDDIMScheduler"
    p_t = transformer.get("patch_size_t") or 1
    return ModelInfo(
        name=str(root),
        family="cogvideox",
        spatial_factor=2 ** (len(vae.get("block_out_channels", (1, 1, 1, 1))) - 1),
        temporal_factor=int(vae.get("temporal_compression_ratio", 4)),
        patch_spatial=int(transformer.get("patch_size", 2)),
        latent_channels=int(transformer.get("in_channels", 16)) // (2 if image else 1),
        supports_image=image,
        image_channels=int(transformer.get("in_channels", 16)) // 2 if image else 0,
        scheduler_class=cls,
        scheduler_config={k: v for k, v in sched.items() if not k.startswith("_")},
        text_embed_dim=int(transformer.get("text_embed_dim", 4096)),
        latent_frame_multiple=int(p_t),
        latent_pad_frames=1 if p_t > 1 else 0,
        description=extra.get("description", f"CogVideoX {'1.5' if v15 else '1.0'} model from {root}"),
        revision=revision,
        **fields,
    )


def directory_info(path: str | Path) -> ModelInfo:
    """A diffusers-layout CogVideoX directory's configs (no weights) as a ModelInfo."""
    root = Path(path)
    read = lambda sub, name="config.json": json.loads((root / sub / name).read_text())  # noqa: E731
    image = read(".", "model_index.json").get("_class_name") == "CogVideoXImageToVideoPipeline"
    return _info(
        root,
        read("transformer"),
        read("vae"),
        read("scheduler", "scheduler_config.json"),
        read_overrides(root),
        image,
        revision=directory_revision(root),
    )


class CogVideoXBackend(LazyBackend):
    """CogVideoX text-to-video behind the renderer's protocol (see the module docstring)."""

    @torch.no_grad()
    def predict(self, latents, timestep, embeds, offset=(0, 0), image=None):
        model = self.transformer
        cfg = model.config
        p = cfg.patch_size
        p_t = cfg.patch_size_t or 1
        _, _, frames, h, w = latents.shape
        cos, sin = rotary_tables(
            cfg.attention_head_dim, (frames + p_t - 1) // p_t, h // p, w // p, self.position_offset(offset, p)
        )
        x = latents.to(self.device, self.dtype)
        ofs = None
        if self.info.supports_image:
            if image is None or image.latents is None:
                raise ValueError(
                    f"{self.info.name} is an image-to-video model: predict needs the tile's image "
                    "condition (ImageCondition from encode_image)"
                )
            x = torch.cat([x, image.latents.to(self.device, self.dtype)], dim=1)  # channels, as the pipeline
            if cfg.ofs_embed_dim:
                ofs = x.new_full((1,), 2.0)  # the I2V pipeline's constant
        out = model(
            hidden_states=x.permute(0, 2, 1, 3, 4),
            ofs=ofs,
            encoder_hidden_states=embeds.to(self.device, self.dtype),
            timestep=timestep.to(self.device),
            image_rotary_emb=(cos.to(self.device), sin.to(self.device)),
            return_dict=False,
        )[0]
        return out.permute(0, 2, 1, 3, 4).float()

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, num_frames: int) -> ImageCondition:
        """CogVideoXImageToVideoPipeline's condition: the image's scaled latent in the first latent
        frame, zeros in the others (with 1.5's padding frame, the image sits in that frame, as in
        the pipeline); no global embedding."""
        if not self.info.supports_image:
            return super().encode_image(image, num_frames)
        vae = self.vae
        with self._vae_lock:
            z = vae.encode(image[:, :, None].to(self.device, torch.float32)).latent_dist.mode()
        sf = vae.config.scaling_factor
        z = z / sf if vae.config.invert_scale_latents else z * sf
        frames = self.info.latent_frames(num_frames)
        cond = torch.cat([z, z.new_zeros(1, z.shape[1], frames - 1, *z.shape[3:])], dim=2)
        return ImageCondition(cond.float(), None)

    @torch.no_grad()
    def vae_encode(self, video: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        with self._vae_lock:
            z = vae.encode(video.to(self.device, torch.float32)).latent_dist.mode()
        z = z * vae.config.scaling_factor
        pad = self.info.latent_pad_frames
        if pad:  # the transformer's padding frame: a copy of the first (see the module docstring)
            z = torch.cat([z[:, :, :1].expand(-1, -1, pad, -1, -1), z], dim=2)
        return z.float()

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = latents[:, :, self.info.latent_pad_frames :].to(self.device, torch.float32)
        with self._vae_lock:
            video = vae.decode(z / vae.config.scaling_factor).sample
        return video.clamp(-1, 1).float()


def load_directory(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> CogVideoXBackend:
    """A CogVideoX model saved in diffusers layout on local disk (safetensors only, no hub)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    root = str(path)
    info = directory_info(root)

    def transformer():
        return load_component(CogVideoXTransformer3DModel, root, "transformer", device, torch_dtype=dtype)

    def vae():
        return load_component(
            AutoencoderKLCogVideoX, root, "vae", device, tiling=True, torch_dtype=torch.float32
        )

    def text():
        from diffusers import CogVideoXPipeline
        from transformers import AutoTokenizer, T5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
        encoder = load_component(T5EncoderModel, root, "text_encoder", device, dtype=dtype)
        pipe = CogVideoXPipeline(
            tokenizer=tokenizer, text_encoder=encoder, vae=None, transformer=None, scheduler=None
        )

        @torch.no_grad()
        def encode(prompt: str, negative: str):
            pos, neg = pipe.encode_prompt(
                prompt,
                negative,
                do_classifier_free_guidance=True,
                max_sequence_length=info.text_tokens,
                device=torch.device(device),
            )
            return pos[0], neg[0]

        return encode

    backend = CogVideoXBackend(info, {"transformer": transformer, "vae": vae, "text": text}, device, dtype)
    backend.canvas_positions = read_overrides(root).get("tile_positions", "canvas") == "canvas"
    return backend


def save_tiny_pipeline(
    path: str | Path, seed: int = 0, native: tuple[int, int] = (64, 64), image: bool = False
) -> Path:
    """Save a tiny CogVideoX 1.5-style pipeline (rotary transformer with temporal patch 2, VAE,
    T5, word tokenizer, the DPM scheduler real checkpoints name) in diffusers layout, built in code.
    ``image``: the image-to-video variant (image latents as extra input channels, ``ofs``)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDPMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from pipelines.text import TINY_WORDS, tiny_word_tokenizer

    root = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = T5EncoderModel(
            T5Config(vocab_size=len(TINY_WORDS), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4)
        ).eval()
        tcfg = dict(TINY_TRANSFORMER_CONFIG)
        if image:
            tcfg.update(in_channels=8, ofs_embed_dim=2)  # = time_embed_dim, as 512 = 512 in 1.5-I2V
        transformer = CogVideoXTransformer3DModel(**tcfg)
        vae = AutoencoderKLCogVideoX(**TINY_VAE_CONFIG)
    pipeline_class = CogVideoXPipeline
    if image:
        from diffusers import CogVideoXImageToVideoPipeline as pipeline_class
    pipe = pipeline_class(
        tokenizer=tiny_word_tokenizer(),
        text_encoder=encoder,
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDPMScheduler(**SCHEDULER_CONFIG),
    )
    pipe.save_pretrained(root, safe_serialization=True)
    (root / "supergen.json").write_text(
        json.dumps(
            {
                "native_height": native[0],
                "native_width": native[1],
                "native_frames": 9,
                "fps": 8,
                "default_steps": 10,
                "max_sequence_length": 16,
                "description": "tiny random CogVideoX 1.5-style pipeline saved from code (tests)",
            }
        )
    )
    return root
