"""LTX-Video text-to-video: ``LTXVideoTransformer3DModel`` + ``AutoencoderKLLTXVideo`` + T5, from a
local diffusers directory.

What differs from Wan, and how the backend hides it from the renderer:
- **Packed tokens**: the transformer takes ``(B, S, C*p_t*p*p)`` tokens plus the latent grid size;
  ``predict`` packs the renderer's ``(B, C, F, h, w)`` tile and unpacks the output.
- **Text**: T5 embeddings come with an attention mask the transformer uses, so the backend packs
  the mask into the prompt tensor as an extra column (``pipelines.base.pack_text``).
- **Positions**: rotary embeddings in self-attention only (text is reached by a separate
  cross-attention), scaled by ``rope_interpolation_scale = (temporal factor / frame rate, spatial
  factor, spatial factor)``. Rotary positions are relative, so a tile's canvas offset does not
  matter (tests/test_ltx.py measures it); the frame rate used is the model's native ``fps``.
- **Scheduler**: flow-matching Euler with the pipeline's own sigmas ``linspace(1, 1/n, n)`` and
  a resolution-dependent shift ``mu``; a tile is native-sized, so ``mu`` is the one of a native
  render (``FlowMatchSigmasScheduler`` keeps both in the config). The pipeline would pick another
  ``mu`` for another frame count: here the native frame count's ``mu`` is used for every render.
- **Normalisation**: ``(z - latents_mean) * scaling_factor / latents_std`` with the VAE's
  buffers; decoding uses the pipeline's default ``decode_timestep=0`` (no decode noise).
- **Image-to-video** (``LTXImageToVideoPipeline``): the image's latent *is* the first latent frame,
  at timestep 0, never stepped: ``encode_image`` gives a frozen condition
  (``ImageCondition.frozen``), ``predict`` puts it into the tile and gives those tokens timestep 0,
  and the renderer keeps the cells fixed after every step.
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
    ModelInfo,
    directory_revision,
    load_component,
    pack_text,
    read_overrides,
    unpack_text,
)

__all__ = [
    "DEFAULTS",
    "TINY_TRANSFORMER_CONFIG",
    "TINY_VAE_CONFIG",
    "LTXBackend",
    "directory_info",
    "load_directory",
    "pack_latents",
    "unpack_latents",
    "save_tiny_pipeline",
]

DEFAULTS = FamilyDefaults(
    family="ltx",
    pipelines=("LTXPipeline", "LTXImageToVideoPipeline"),
    components=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    native_height=512,
    native_width=704,
    native_frames=161,
    fps=25,
    default_steps=50,
    default_guidance=3.0,
    default_refine_fraction=0.9,
    temporal_factor=8,
    text_tokens=128,
    guidance_note="guidance_rescale not supported; scheduler shift fixed at the native size and frame count",
    description="LTX-Video T2V (LTXVideoTransformer3DModel + AutoencoderKLLTXVideo, T5)",
)

TINY_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    in_channels=8,
    out_channels=8,
    patch_size=1,
    patch_size_t=1,
    num_attention_heads=2,
    attention_head_dim=8,
    cross_attention_dim=16,
    num_layers=2,
    caption_channels=16,
    qk_norm="rms_norm_across_heads",
)
# the real VAE's factors (32x space, 8x time) with 8 channels per block
TINY_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=8,
    block_out_channels=(8, 8, 8, 8),
    decoder_block_out_channels=(8, 8, 8, 8),
    layers_per_block=(1, 1, 1, 1, 1),
    decoder_layers_per_block=(1, 1, 1, 1, 1),
    spatio_temporal_scaling=(True, True, True, False),
    decoder_spatio_temporal_scaling=(True, True, True, False),
    decoder_inject_noise=(False, False, False, False, False),
    upsample_residual=(False, False, False, False),
    upsample_factor=(1, 1, 1, 1),
    timestep_conditioning=False,
    patch_size=4,
    patch_size_t=1,
    encoder_causal=True,
    decoder_causal=False,
)
# LTX-Video's scheduler settings (dynamic shift between 0.95 and 2.05)
SCHEDULER_CONFIG: dict[str, Any] = dict(
    base_image_seq_len=1024,
    base_shift=0.95,
    max_image_seq_len=4096,
    max_shift=2.05,
    num_train_timesteps=1000,
    shift=1.0,
    shift_terminal=0.1,
    use_dynamic_shifting=True,
)


def pack_latents(latents: torch.Tensor, p: int = 1, p_t: int = 1) -> torch.Tensor:
    """``(B, C, F, H, W)`` -> ``(B, F/p_t * H/p * W/p, C*p_t*p*p)``, the pipeline's token order."""
    b, c, f, h, w = latents.shape
    x = latents.reshape(b, c, f // p_t, p_t, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)


def unpack_latents(tokens: torch.Tensor, f: int, h: int, w: int, p: int = 1, p_t: int = 1) -> torch.Tensor:
    """Inverse of ``pack_latents`` (``f, h, w`` are the token grid's sizes)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, f, h, w, -1, p_t, p, p)
    return x.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def _vae_factors(vae: dict) -> tuple[int, int]:
    scaling = sum(bool(s) for s in vae.get("spatio_temporal_scaling", (True, True, True, False)))
    spatial = vae.get("spatial_compression_ratio") or vae.get("patch_size", 4) * 2**scaling
    temporal = vae.get("temporal_compression_ratio") or vae.get("patch_size_t", 1) * 2**scaling
    return int(spatial), int(temporal)


def _mu(sched: dict, seq_len: int) -> float:
    """The pipeline's ``calculate_shift`` for a sequence of ``seq_len`` latent cells."""
    base_len, max_len = sched.get("base_image_seq_len", 256), sched.get("max_image_seq_len", 4096)
    base_shift, max_shift = sched.get("base_shift", 0.5), sched.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    return float(seq_len * m + base_shift - m * base_len)


def directory_info(path: str | Path) -> ModelInfo:
    """A diffusers-layout LTX-Video directory's configs (no weights) as a ModelInfo."""
    root = Path(path)
    transformer = json.loads((root / "transformer" / "config.json").read_text())
    vae = json.loads((root / "vae" / "config.json").read_text())
    sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    extra = read_overrides(root)
    fields = DEFAULTS.overrides(extra)
    spatial, temporal = _vae_factors(vae)
    p = int(transformer.get("patch_size", 1))
    sched = {k: v for k, v in sched.items() if not k.startswith("_")}
    seq = (
        ((fields["native_frames"] - 1) // temporal + 1)
        * (fields["native_height"] // spatial)
        * (fields["native_width"] // spatial)
    )
    sched.update(
        sigma_spacing="linspace_to_1_over_n",
        mu=_mu(sched, seq) if sched.get("use_dynamic_shifting") else None,
    )
    image = (
        json.loads((root / "model_index.json").read_text()).get("_class_name") == "LTXImageToVideoPipeline"
    )
    channels = int(transformer.get("in_channels", 128))
    return ModelInfo(
        name=str(root),
        family="ltx",
        supports_image=image,
        image_channels=1 + channels if image else 0,  # the frozen first frame: mask, then values
        image_frozen=image,
        spatial_factor=spatial,
        temporal_factor=temporal,
        patch_spatial=p,
        latent_channels=int(transformer.get("in_channels", 128)),
        scheduler_class="FlowMatchSigmasScheduler",
        scheduler_config=sched,
        text_embed_dim=int(transformer.get("caption_channels", 4096)) + 1,  # + the mask column
        latent_frame_multiple=int(transformer.get("patch_size_t", 1)),
        description=extra.get("description", f"LTX-Video model from {root}"),
        revision=directory_revision(root),
        **fields,
    )


class LTXBackend(LazyBackend):
    """LTX-Video text-to-video behind the renderer's protocol (see the module docstring)."""

    @torch.no_grad()
    def predict(self, latents, timestep, embeds, offset=(0, 0), image=None):
        model = self.transformer
        p, p_t = model.config.patch_size, model.config.patch_size_t
        _, _, frames, h, w = latents.shape
        text, mask, _ = unpack_text(embeds, has_mask=True)
        t = timestep.to(self.device)
        if self.info.supports_image:
            if image is None or image.latents is None:
                raise ValueError(
                    f"{self.info.name} is an image-to-video model: predict needs the tile's image "
                    "condition (ImageCondition from encode_image)"
                )
            latents = image.freeze(latents.to(self.device))
            # the pipeline's per-token timesteps: 0 on the image's (frozen) tokens
            moving = 1 - image.latents[:, 0, ::p_t, ::p, ::p].to(t.device, t.dtype)
            t = t.reshape(-1, 1) * moving.reshape(moving.shape[0], -1)
        scale = (
            self.info.temporal_factor / self.info.fps,
            self.info.spatial_factor,
            self.info.spatial_factor,
        )
        out = model(
            hidden_states=pack_latents(latents.to(self.device, self.dtype), p, p_t),
            encoder_hidden_states=text.to(self.device, self.dtype),
            timestep=t,
            encoder_attention_mask=mask.to(self.device),
            num_frames=frames // p_t,
            height=h // p,
            width=w // p,
            rope_interpolation_scale=scale,
            return_dict=False,
        )[0]
        return unpack_latents(out.float(), frames // p_t, h // p, w // p, p, p_t)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, num_frames: int) -> ImageCondition:
        """LTXImageToVideoPipeline's condition: the image alone, encoded and normalised, frozen into
        the first latent frame (channel 0: 1 there; then the values)."""
        if not self.info.supports_image:
            return super().encode_image(image, num_frames)
        z = self.vae_encode(image[:, :, None])
        frames = self.info.latent_frames(num_frames)
        keep = z.new_zeros(1, 1, frames, *z.shape[3:])
        keep[:, :, 0] = 1
        values = torch.cat([z, z.new_zeros(1, z.shape[1], frames - 1, *z.shape[3:])], dim=2)
        return ImageCondition(torch.cat([keep, values], dim=1).float(), None, frozen=True)

    def _stats(self, like: torch.Tensor):
        vae = self.vae
        shape = (1, -1, 1, 1, 1)
        mean = vae.latents_mean.view(shape).to(like.device, like.dtype)
        std = vae.latents_std.view(shape).to(like.device, like.dtype)
        return mean, std, vae.config.scaling_factor

    @torch.no_grad()
    def vae_encode(self, video: torch.Tensor) -> torch.Tensor:
        with self._vae_lock:
            z = self.vae.encode(video.to(self.device, torch.float32)).latent_dist.mode()
        mean, std, scale = self._stats(z)
        return ((z - mean) * scale / std).float()

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = latents.to(self.device, torch.float32)
        mean, std, scale = self._stats(z)
        z = z * std / scale + mean
        temb = torch.zeros(z.shape[0], device=z.device) if vae.config.timestep_conditioning else None
        with self._vae_lock:
            video = vae.decode(z, temb, return_dict=False)[0]
        return video.clamp(-1, 1).float()


def load_directory(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LTXBackend:
    """An LTX-Video model saved in diffusers layout on local disk (safetensors only, no hub)."""
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel

    root = str(path)
    info = directory_info(root)

    def transformer():
        return load_component(LTXVideoTransformer3DModel, root, "transformer", device, torch_dtype=dtype)

    def vae():
        return load_component(
            AutoencoderKLLTXVideo, root, "vae", device, tiling=True, torch_dtype=torch.float32
        )

    def text():
        from diffusers import LTXPipeline
        from transformers import AutoTokenizer, T5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
        encoder = load_component(T5EncoderModel, root, "text_encoder", device, dtype=dtype)
        pipe = LTXPipeline(
            tokenizer=tokenizer, text_encoder=encoder, vae=None, transformer=None, scheduler=None
        )

        @torch.no_grad()
        def encode(prompt: str, negative: str):
            pos, pos_mask, neg, neg_mask = pipe.encode_prompt(
                prompt,
                negative,
                do_classifier_free_guidance=True,
                max_sequence_length=info.text_tokens,
                device=torch.device(device),
            )
            return pack_text(pos[0].cpu(), pos_mask[0].cpu()), pack_text(neg[0].cpu(), neg_mask[0].cpu())

        return encode

    return LTXBackend(info, {"transformer": transformer, "vae": vae, "text": text}, device, dtype)


def save_tiny_pipeline(
    path: str | Path, seed: int = 0, native: tuple[int, int] = (128, 128), image: bool = False
) -> Path:
    """Save a tiny LTX-Video pipeline (transformer, VAE with the real 32x/8x factors, T5, word
    tokenizer, the real scheduler settings) in diffusers layout, built in code; ``image``: as an
    ``LTXImageToVideoPipeline`` (the same components)."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from pipelines.text import TINY_WORDS, tiny_word_tokenizer

    root = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = T5EncoderModel(
            T5Config(vocab_size=len(TINY_WORDS), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
        ).eval()
        transformer = LTXVideoTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
        vae = AutoencoderKLLTXVideo(**TINY_VAE_CONFIG)
        # trained VAEs carry per-channel statistics: make them non-trivial so the tests see them
        vae.latents_mean.copy_(torch.randn(vae.latents_mean.shape) * 0.1)
        vae.latents_std.copy_(torch.rand(vae.latents_std.shape) + 0.5)
    if image:
        from diffusers import LTXImageToVideoPipeline as LTXPipeline  # noqa: N814
    pipe = LTXPipeline(
        tokenizer=tiny_word_tokenizer(),
        text_encoder=encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
    )
    pipe.save_pretrained(root, safe_serialization=True)
    (root / "supergen.json").write_text(
        json.dumps(
            {
                "native_height": native[0],
                "native_width": native[1],
                "native_frames": 9,
                "default_steps": 10,
                "max_sequence_length": 16,
                "description": "tiny random LTX-Video pipeline saved from code (tests)",
            }
        )
    )
    return root
