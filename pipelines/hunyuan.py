"""HunyuanVideo text-to-video: ``HunyuanVideoTransformer3DModel`` + ``AutoencoderKLHunyuanVideo`` +
a Llama text encoder (token embeddings) and a CLIP text encoder (pooled embedding), from a local
diffusers directory.

What differs from Wan, and how the backend hides it from the renderer:
- **Text**: three conditionings per prompt: Llama hidden states ``(L, D)``, their attention mask
  ``(L,)`` and CLIP's pooled ``(P,)``. The renderer stores one ``(L', D')`` tensor per prompt, so
  the backend packs them (``pipelines.base.pack_text``: the mask as an extra column, the pooled
  vector as an extra row); ``ModelInfo.text_tokens``/``text_embed_dim`` are the packed shape.
- **Guidance**: the checkpoints are guidance-distilled: the pipeline's ``guidance_scale`` (6.0)
  is *embedded* into the transformer, and real classifier-free guidance is its
  ``true_cfg_scale`` (1.0, off). The renderer's ``guidance_scale`` is real CFG, so its default
  here is 1.0 and the embedded scale is a model setting (``embedded_guidance_scale`` in
  ``supergen.json``, default 6.0, part of the weights' revision).
- **Positions**: rotary embeddings rotate only the video tokens, and the single-stream blocks
  attend text and video jointly, so a tile's output depends on where its positions start
  (tests/test_hunyuan.py measures it). The transformer builds its rotary tables inside
  (``transformer.rope``, from 0); the backend swaps in a module that starts them at the tile's
  canvas offset (per calling thread, so concurrent tiles never see each other's offset).
- **Scheduler**: flow-matching Euler with ``shift`` 7 and the pipeline's own sigmas
  ``linspace(1, 0, n + 1)[:-1]`` (``FlowMatchSigmasScheduler``).
- **Normalisation**: latents are the VAE's posterior mode times ``scaling_factor``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch

from pipelines.base import (
    FamilyDefaults,
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
    "HunyuanVideoBackend",
    "OffsetRotary",
    "directory_info",
    "load_directory",
    "save_tiny_pipeline",
]

DEFAULTS = FamilyDefaults(
    family="hunyuan",
    pipelines=("HunyuanVideoPipeline",),
    components=(
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "scheduler",
    ),
    native_height=720,
    native_width=1280,
    native_frames=129,
    fps=24,
    default_steps=50,
    default_guidance=1.0,
    default_refine_fraction=0.9,
    temporal_factor=4,
    text_tokens=256,
    cache_threshold=0.06,  # the published HunyuanVideo tau (after the gain-estimator fix)
    guidance_note="guidance_scale is true CFG (pipeline's true_cfg_scale); embedded guidance 6.0 from supergen.json",
    description="HunyuanVideo T2V (HunyuanVideoTransformer3DModel + AutoencoderKLHunyuanVideo, Llama + CLIP)",
)

TINY_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=10,
    num_layers=1,
    num_single_layers=1,
    num_refiner_layers=1,
    patch_size=2,
    patch_size_t=1,
    guidance_embeds=True,
    text_embed_dim=16,
    pooled_projection_dim=8,
    rope_axes_dim=(2, 4, 4),
)
TINY_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
    up_block_types=("HunyuanVideoUpBlock3D",) * 4,
    block_out_channels=(8, 8, 8, 8),
    layers_per_block=1,
    act_fn="silu",
    norm_num_groups=4,
    scaling_factor=0.476986,
    spatial_compression_ratio=8,
    temporal_compression_ratio=4,
    mid_block_add_attention=True,
)


class OffsetRotary(torch.nn.Module):
    """``HunyuanVideoRotaryPosEmbed`` with positions starting at the calling thread's offset
    (patches; 0 gives the original tables exactly)."""

    def __init__(self, rope: torch.nn.Module):
        super().__init__()
        self.inner = rope
        self._local = threading.local()

    def set_offset(self, offset: tuple[float, float]) -> None:
        self._local.offset = offset

    def forward(self, hidden_states: torch.Tensor):
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        r = self.inner
        _, _, frames, height, width = hidden_states.shape
        oy, ox = getattr(self._local, "offset", (0.0, 0.0))
        dev = hidden_states.device
        axes = [
            torch.arange(0, frames // r.patch_size_t, device=dev, dtype=torch.float32),
            torch.arange(0, height // r.patch_size, device=dev, dtype=torch.float32) + float(oy),
            torch.arange(0, width // r.patch_size, device=dev, dtype=torch.float32) + float(ox),
        ]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
        freqs = [
            get_1d_rotary_pos_embed(r.rope_dim[i], grid[i].reshape(-1), r.theta, use_real=True)
            for i in range(3)
        ]
        return torch.cat([f[0] for f in freqs], dim=1), torch.cat([f[1] for f in freqs], dim=1)


def directory_info(path: str | Path) -> ModelInfo:
    """A diffusers-layout HunyuanVideo directory's configs (no weights) as a ModelInfo."""
    root = Path(path)
    transformer = json.loads((root / "transformer" / "config.json").read_text())
    vae = json.loads((root / "vae" / "config.json").read_text())
    sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    extra = read_overrides(root)
    fields = DEFAULTS.overrides(extra)
    fields["text_tokens"] += 1  # + the pooled row
    sched = {k: v for k, v in sched.items() if not k.startswith("_")}
    sched["sigma_spacing"] = "linspace_to_0"
    return ModelInfo(
        name=str(root),
        family="hunyuan",
        spatial_factor=int(vae.get("spatial_compression_ratio", 8)),
        temporal_factor=int(vae.get("temporal_compression_ratio", 4)),
        patch_spatial=int(transformer.get("patch_size", 2)),
        latent_channels=int(transformer.get("in_channels", 16)),
        scheduler_class="FlowMatchSigmasScheduler",
        scheduler_config=sched,
        text_embed_dim=int(transformer.get("text_embed_dim", 4096)) + 1,  # + the mask column
        latent_frame_multiple=int(transformer.get("patch_size_t", 1)),
        description=extra.get("description", f"HunyuanVideo model from {root}"),
        revision=directory_revision(root),
        **fields,
    )


class HunyuanVideoBackend(LazyBackend):
    """HunyuanVideo text-to-video behind the renderer's protocol (see the module docstring)."""

    def __init__(
        self, info, loaders, device="cpu", dtype=torch.float32, embedded_guidance: float | None = 6.0
    ):
        super().__init__(info, loaders, device, dtype)
        self.embedded_guidance = embedded_guidance

    @torch.no_grad()
    def predict(self, latents, timestep, embeds, offset=(0, 0), image=None):  # text-to-video: no image
        model = self.transformer
        p = model.config.patch_size
        text, mask, pooled = unpack_text(embeds, has_mask=True, pooled_dim=model.config.pooled_projection_dim)
        guidance = None
        if model.config.guidance_embeds:
            guidance = torch.full(
                (latents.shape[0],), self.embedded_guidance * 1000.0, device=self.device, dtype=self.dtype
            )
        model.rope.set_offset(self.position_offset(offset, p))
        out = model(
            hidden_states=latents.to(self.device, self.dtype),
            timestep=timestep.to(self.device, torch.float32),  # as the pipeline: bf16 would round t
            encoder_hidden_states=text.to(self.device, self.dtype),
            encoder_attention_mask=mask.to(self.device, self.dtype),
            pooled_projections=pooled.to(self.device, self.dtype),
            guidance=guidance,
            return_dict=False,
        )[0]
        return out.float()

    @torch.no_grad()
    def vae_encode(self, video: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        with self._vae_lock:
            z = vae.encode(video.to(self.device, torch.float32)).latent_dist.mode()
        return (z * vae.config.scaling_factor).float()

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = latents.to(self.device, torch.float32) / vae.config.scaling_factor
        with self._vae_lock:
            video = vae.decode(z, return_dict=False)[0]
        return video.clamp(-1, 1).float()


def load_directory(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> HunyuanVideoBackend:
    """A HunyuanVideo model saved in diffusers layout on local disk (safetensors only, no hub)."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

    root = str(path)
    info = directory_info(root)
    extra = read_overrides(root)
    kw = dict(local_files_only=True, use_safetensors=True)

    def transformer():
        m = HunyuanVideoTransformer3DModel.from_pretrained(
            root, subfolder="transformer", torch_dtype=dtype, **kw
        )
        m.rope = OffsetRotary(m.rope)
        return m.to(device).eval().requires_grad_(False)

    def vae():
        return load_component(
            AutoencoderKLHunyuanVideo, root, "vae", device, tiling=True, torch_dtype=torch.float32
        )

    def text():
        from diffusers import HunyuanVideoPipeline
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
        from transformers import AutoModel, AutoTokenizer, CLIPTextModel

        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
        tokenizer_2 = AutoTokenizer.from_pretrained(root, subfolder="tokenizer_2", local_files_only=True)
        llama = AutoModel.from_pretrained(root, subfolder="text_encoder", dtype=dtype, **kw)
        clip = CLIPTextModel.from_pretrained(root, subfolder="text_encoder_2", dtype=dtype, **kw)
        pipe = HunyuanVideoPipeline(
            text_encoder=llama.to(device).eval(),
            tokenizer=tokenizer,
            transformer=None,
            vae=None,
            scheduler=None,
            text_encoder_2=clip.to(device).eval(),
            tokenizer_2=tokenizer_2,
        )
        template = extra.get("prompt_template", DEFAULT_PROMPT_TEMPLATE)

        @torch.no_grad()
        def one(prompt: str) -> torch.Tensor:
            embeds, pooled, mask = pipe.encode_prompt(
                prompt=prompt,
                prompt_2=None,
                prompt_template=template,
                device=torch.device(device),
                max_sequence_length=info.text_tokens - 1,
            )
            return pack_text(embeds[0].cpu(), mask[0].cpu(), pooled[0].cpu())

        return lambda prompt, negative: (one(prompt), one(negative))

    backend = HunyuanVideoBackend(
        info,
        {"transformer": transformer, "vae": vae, "text": text},
        device,
        dtype,
        embedded_guidance=float(extra.get("embedded_guidance_scale", 6.0)),
    )
    backend.canvas_positions = extra.get("tile_positions", "canvas") == "canvas"
    return backend


def save_tiny_pipeline(path: str | Path, seed: int = 0, native: tuple[int, int] = (64, 64)) -> Path:
    """Save a tiny HunyuanVideo pipeline (transformer, VAE, Llama and CLIP text encoders with word
    tokenizers, flow-matching scheduler with shift 7) in diffusers layout, built in code."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from pipelines.text import TINY_WORDS, tiny_word_tokenizer

    words = TINY_WORDS + ["<s>"]
    root = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llama = LlamaModel(
            LlamaConfig(
                vocab_size=len(words),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=3,
                num_attention_heads=2,
                num_key_value_heads=2,
                pad_token_id=0,
            )
        ).eval()
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(words),
                hidden_size=8,
                intermediate_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=77,
                pad_token_id=0,
                bos_token_id=len(words) - 1,
                eos_token_id=1,
            )
        ).eval()
        transformer = HunyuanVideoTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
        vae = AutoencoderKLHunyuanVideo(**TINY_VAE_CONFIG)
    pipe = HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=tiny_word_tokenizer(words, bos="<s>"),
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=clip,
        tokenizer_2=tiny_word_tokenizer(words, bos="<s>"),
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
                "embedded_guidance_scale": 6.0,
                "prompt_template": {"template": "describe : {}", "crop_start": 3},
                "description": "tiny random HunyuanVideo pipeline saved from code (tests)",
            }
        )
    )
    return root
