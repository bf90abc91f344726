"""HunyuanVideo text-to-video and image-to-video: ``HunyuanVideoTransformer3DModel`` +
``AutoencoderKLHunyuanVideo`` + a Llama text encoder (token embeddings; Llava for image-to-video) and
a CLIP text encoder (pooled embedding), from a local diffusers directory.

What differs from Wan, and how the backend hides it from the renderer:
- **Text**: three conditionings per prompt: Llama hidden states ``(L, D)``, their attention mask
  ``(L,)`` and CLIP's pooled ``(P,)``. The renderer stores one ``(L', D')`` tensor per prompt, so
  the backend packs them (``pipelines.base.pack_text``: the mask as an extra column, the pooled
  vector as an extra row); ``ModelInfo.text_tokens``/``text_embed_dim`` are the packed shape.
- **Guidance**: the checkpoints are guidance-distilled: the pipeline's ``guidance_scale`` is
  *embedded* into the transformer, and real classifier-free guidance is its ``true_cfg_scale``
  (1.0, off). The renderer's ``guidance_scale`` is real CFG, so its default here is 1.0, and the
  embedded scale is the spec's ``embedded_guidance_scale`` (default 6.0, or ``supergen.json``'s).
  It reaches the transformer with the prompt: ``encode_prompt`` writes it into the packed tensor's
  last cell (the pooled row's mask column, otherwise unused), so it is stored, checksummed and
  handed to every tile with the text it conditions along with (``pack_prompt``/``unpack_prompt``).
- **Positions**: rotary embeddings rotate only the video tokens, and the single-stream blocks
  attend text and video jointly, so a tile's output depends on where its positions start
  (tests/test_hunyuan.py measures it). The transformer builds its rotary tables inside
  (``transformer.rope``, from 0); the backend swaps in a module that starts them at the tile's
  canvas offset (per calling thread, so concurrent tiles never see each other's offset).
- **Scheduler**: flow-matching Euler with ``shift`` 7 and the pipeline's own sigmas
  ``linspace(1, 0, n + 1)[:-1]`` (``FlowMatchSigmasScheduler``).
- **Normalisation**: latents are the VAE's posterior mode times ``scaling_factor``.
- **Image-to-video** (``HunyuanVideoImageToVideoPipeline``, by the transformer's
  ``image_condition_type``):

  - the prompt's encoder is Llava and sees the image (``ModelInfo.prompt_sees_image``): the image's
    tokens (every 2nd, or every 4th for ``token_replace``) lead the prompt's, and the negative
    prompt is encoded with a black image, as the pipeline does (with every 2nd image token, so it
    is the longer of the two: the positive is zero-padded, its mask 0 there, which the
    transformer's mask ignores);
  - ``latent_concat`` (33-channel checkpoints): the condition is the image's latent in the first
    latent frame (zeros after) and a mask that is 1 there, concatenated to a tile's channels; the
    pipeline drops that first latent frame's video (4 frames) from its output, so the canvas
    carries it as a padding frame (``latent_pad_frames``): ``vae_decode`` drops its frames,
    ``vae_encode`` puts a copy of the first latent frame there (as for CogVideoX 1.5);
  - ``token_replace``: the first latent frame *is* the image's latent (a frozen condition,
    ``ImageCondition.frozen``, as LTX and Wan 2.2 TI2V); the transformer itself gives those tokens
    timestep 0;
  - not reproduced: the pipeline starts from ``0.999 * noise + 0.001 * image latent`` (every
    frame); a render starts from the noise alone.
- **Preset** ``random-hunyuanvideo-shape``: random weights in the exact shape of HunyuanVideo's 13B
  transformer (guidance embeddings on) and its VAE, with hashed prompt conditioning of the real
  shapes (Llama's 256 x 4096 tokens and mask, CLIP's pooled 768), for timing on a GPU; its
  ModelInfo is what ``directory_info`` gives for the real checkpoint.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch

from pipelines.base import (
    FamilyDefaults,
    ImageCondition,
    LazyBackend,
    ModelInfo,
    cast_weights,
    directory_revision,
    load_component,
    pack_text,
    place,
    random_vae,
    random_weights,
    read_overrides,
    unpack_text,
)
from pipelines.text import HashTextEncoder

__all__ = [
    "DEFAULTS",
    "DEFAULT_EMBEDDED_GUIDANCE",
    "IMAGE_CONDITIONS",
    "TINY_TRANSFORMER_CONFIG",
    "TINY_VAE_CONFIG",
    "HunyuanVideoBackend",
    "OffsetRotary",
    "directory_info",
    "load_directory",
    "load_preset",
    "preset_info",
    "preset_names",
    "preset_transformer_config",
    "pack_prompt",
    "unpack_prompt",
    "save_tiny_pipeline",
]

# the T2V pipeline's default guidance_scale; the I2V pipeline's is 1.0, but diffusers' example for
# the guidance-distilled I2V checkpoint passes 6.0
DEFAULT_EMBEDDED_GUIDANCE = 6.0
IMAGE_CONDITIONS = ("latent_concat", "token_replace")
# the image tokens kept for the prompt: the I2V pipeline's default ``image_embed_interleave``
_INTERLEAVE = {"latent_concat": 2, "token_replace": 4}

DEFAULTS = FamilyDefaults(
    family="hunyuan",
    pipelines=("HunyuanVideoPipeline", "HunyuanVideoImageToVideoPipeline"),
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
    guidance_note=(
        "guidance_scale is true CFG (pipeline's true_cfg_scale); "
        "embedded_guidance_scale (the pipeline's guidance_scale) 6.0"
    ),
    description="HunyuanVideo T2V/I2V (HunyuanVideoTransformer3DModel + AutoencoderKLHunyuanVideo, Llama + CLIP)",
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
# its vae/config.json (AutoencoderKLHunyuanVideo's defaults: 8x spatial, 4x temporal, 16 channels)
HUNYUAN_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
    up_block_types=("HunyuanVideoUpBlock3D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    norm_num_groups=32,
    scaling_factor=0.476986,
    spatial_compression_ratio=8,
    temporal_compression_ratio=4,
    mid_block_add_attention=True,
)
TINY_VAE_CONFIG: dict[str, Any] = dict(
    HUNYUAN_VAE_CONFIG,
    latent_channels=4,
    block_out_channels=(8, 8, 8, 8),
    layers_per_block=1,
    norm_num_groups=4,
)


# HunyuanVideo's transformer/config.json (diffusers' HunyuanVideoTransformer3DModel defaults: 24 heads
# of 128, 20 dual-stream and 40 single-stream blocks, guidance embeddings, Llama 4096 + CLIP 768)
HUNYUAN_13B_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    in_channels=16,
    out_channels=16,
    num_attention_heads=24,
    attention_head_dim=128,
    num_layers=20,
    num_single_layers=40,
    num_refiner_layers=2,
    mlp_ratio=4.0,
    patch_size=2,
    patch_size_t=1,
    qk_norm="rms_norm",
    guidance_embeds=True,
    text_embed_dim=4096,
    pooled_projection_dim=768,
    rope_theta=256.0,
    rope_axes_dim=(16, 56, 56),
)
# its scheduler/scheduler_config.json
HUNYUAN_SCHEDULER_CONFIG: dict[str, Any] = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    invert_sigmas=False,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=7.0,
    shift_terminal=None,
    use_beta_sigmas=False,
    use_dynamic_shifting=False,
    use_exponential_sigmas=False,
    use_karras_sigmas=False,
)

_PRESETS: dict[str, dict[str, Any]] = {
    "random-hunyuanvideo-shape": dict(
        transformer=HUNYUAN_13B_TRANSFORMER_CONFIG,
        vae=HUNYUAN_VAE_CONFIG,
        scheduler=HUNYUAN_SCHEDULER_CONFIG,
        description=(
            "random weights in the shape of HunyuanVideo (timing only): real-size 13B transformer "
            "and VAE, hashed prompt conditioning"
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


class _HashPrompt:
    """The text conditioning of a preset in the real encoders' shapes: hashed word embeddings for
    Llama's hidden states (``tokens`` x ``dim``) with the mask of a prompt as long (its words and
    one end token, the rest padding) and, for CLIP's pooled vector, the mean of hashed embeddings."""

    def __init__(self, dim: int, pooled_dim: int, tokens: int):
        self.tokens = tokens
        self.text = HashTextEncoder(dim, tokens, seed=3)
        self.pooled = HashTextEncoder(pooled_dim, 77, seed=4)

    def __call__(self, prompt: str, guidance: float) -> torch.Tensor:
        embeds = self.text(prompt)
        mask = torch.zeros(self.tokens)
        mask[: min(self.tokens, len(self.text.tokenize(prompt)) + 1)] = 1
        return pack_prompt(embeds, mask, self.pooled(prompt).mean(0), guidance, self.tokens)


def load_preset(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> HunyuanVideoBackend:
    """A random-weight preset, identical on every worker of one kind of device: on a GPU the
    transformer's weights are drawn there (``drawn_on_device``), in ``dtype`` from the start, so
    the card never holds the 52 GB float32 model; elsewhere by the seeded default initialisers.
    Never load a real-size one on a CPU to test it: build it on the ``meta`` device."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

    p = _PRESETS[name]
    info = preset_info(name)
    cfg = p["transformer"]

    def transformer():
        m = random_weights(lambda: HunyuanVideoTransformer3DModel(**cfg), device, dtype)
        m.rope = OffsetRotary(m.rope)
        return cast_weights(m, device, dtype)

    def vae():
        return random_vae(lambda: AutoencoderKLHunyuanVideo(**p["vae"]), device)

    def text():
        prompt = _HashPrompt(cfg["text_embed_dim"], cfg["pooled_projection_dim"], info.text_tokens - 1)

        def encode(prompt_text: str, negative: str, embedded_guidance_scale: float | None = None):
            g = _guidance(info, embedded_guidance_scale)
            return prompt(prompt_text, g), prompt(negative, g)

        return encode

    return HunyuanVideoBackend(info, {"transformer": transformer, "vae": vae, "text": text}, device, dtype)


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


def pack_prompt(
    embeds: torch.Tensor,
    mask: torch.Tensor,
    pooled: torch.Tensor,
    embedded_guidance: float,
    tokens: int,
) -> torch.Tensor:
    """One prompt's conditioning as the renderer's one tensor: ``embeds`` ``(L, D)`` zero-padded to
    ``tokens`` rows (mask 0 there), ``pack_text`` with the mask and ``pooled``, and the embedded
    guidance scale in the last cell (the pooled row's mask column)."""
    extra = tokens - embeds.shape[0]
    if extra < 0:
        raise ValueError(f"prompt embeddings of {embeds.shape[0]} tokens, more than the {tokens} stored")
    embeds = torch.cat([embeds.float(), embeds.new_zeros(extra, embeds.shape[1]).float()])
    mask = torch.cat([mask.float().reshape(-1), mask.new_zeros(extra).float()])
    out = pack_text(embeds, mask, pooled)
    out[-1, -1] = float(embedded_guidance)
    return out


def unpack_prompt(packed: torch.Tensor, pooled_dim: int):
    """Inverse of ``pack_prompt`` on a batch ``(B, L', D')``: ``(embeds, mask, pooled, guidance)``,
    ``guidance`` ``(B,)``."""
    text, mask, pooled = unpack_text(packed, has_mask=True, pooled_dim=pooled_dim)
    return text, mask, pooled, packed[:, -1, -1]


def _image_tokens(template: dict) -> int:
    """Image tokens the longer of an I2V pipeline's two prompts holds (every 2nd of the template's
    ``image_emb_len``: the negative prompt's, and ``latent_concat``'s positive)."""
    return -(-int(template.get("image_emb_len", 576)) // 2)


def _i2v_template(extra: dict) -> dict:
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE

    return extra.get("prompt_template", DEFAULT_PROMPT_TEMPLATE)


def directory_info(path: str | Path) -> ModelInfo:
    """A diffusers-layout HunyuanVideo directory's configs (no weights) as a ModelInfo."""
    root = Path(path)
    transformer = json.loads((root / "transformer" / "config.json").read_text())
    vae = json.loads((root / "vae" / "config.json").read_text())
    sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    index = json.loads((root / "model_index.json").read_text())
    image = index.get("_class_name") == "HunyuanVideoImageToVideoPipeline"
    if image and transformer.get("image_condition_type") in IMAGE_CONDITIONS:
        (root / "image_processor" / "preprocessor_config.json").stat()  # Llava's image processor
    return _info(
        str(root), transformer, vae, sched, read_overrides(root), image, revision=directory_revision(root)
    )


def _info(
    name: str,
    transformer: dict,
    vae: dict,
    sched: dict,
    extra: dict,
    image: bool = False,
    revision: str = "",
) -> ModelInfo:
    """The ModelInfo of a HunyuanVideo model from its configs and ``supergen.json`` (``extra``)."""
    fields = DEFAULTS.overrides(extra)
    in_channels = int(transformer.get("in_channels", 16))
    temporal = int(vae.get("temporal_compression_ratio", 4))
    text_dim = int(transformer.get("text_embed_dim", 4096))
    if int(transformer.get("pooled_projection_dim", 768)) > text_dim:
        raise ValueError("pooled_projection_dim is larger than text_embed_dim: cannot pack the prompt")
    condition = transformer.get("image_condition_type") if image else None
    channels, image_fields = in_channels, {}
    if image:
        if condition not in IMAGE_CONDITIONS:
            raise ValueError(
                f"transformer image_condition_type {condition!r} is not one of {list(IMAGE_CONDITIONS)}"
            )
        concat = condition == "latent_concat"
        channels = (in_channels - 1) // 2 if concat else in_channels
        # the prompt: image tokens first, then the text less the 4 tokens the pipeline crops out
        fields["text_tokens"] += _image_tokens(_i2v_template(extra)) - 4
        if concat and "native_frames" not in extra:  # the pipeline's 129 frames less the 4 it drops
            fields["native_frames"] -= temporal
        image_fields = dict(
            supports_image=True,
            prompt_sees_image=True,
            image_channels=channels + 1,  # the image latent and a mask (the mask first when frozen)
            image_frozen=not concat,
            latent_pad_frames=1 if concat else 0,
        )
    fields["text_tokens"] += 1  # + the pooled row
    sched = {k: v for k, v in sched.items() if not k.startswith("_")}
    sched["sigma_spacing"] = "linspace_to_0"
    guided = bool(transformer.get("guidance_embeds", True))
    return ModelInfo(
        name=name,
        family="hunyuan",
        spatial_factor=int(vae.get("spatial_compression_ratio", 8)),
        temporal_factor=temporal,
        patch_spatial=int(transformer.get("patch_size", 2)),
        latent_channels=channels,
        scheduler_class="FlowMatchSigmasScheduler",
        scheduler_config=sched,
        text_embed_dim=text_dim + 1,  # + the mask column
        latent_frame_multiple=int(transformer.get("patch_size_t", 1)),
        embedded_guidance=(
            float(extra.get("embedded_guidance_scale", DEFAULT_EMBEDDED_GUIDANCE)) if guided else None
        ),
        description=extra.get("description", f"HunyuanVideo model from {name}"),
        revision=revision,
        **image_fields,
        **fields,
    )


class HunyuanVideoBackend(LazyBackend):
    """HunyuanVideo text- and image-to-video behind the renderer's protocol (see the module
    docstring)."""

    @torch.no_grad()
    def predict(self, latents, timestep, embeds, offset=(0, 0), image=None):
        model = self.transformer
        p = model.config.patch_size
        text, mask, pooled, scale = unpack_prompt(embeds, model.config.pooled_projection_dim)
        x = latents.to(self.device)
        if self.info.supports_image:
            if image is None or image.latents is None:
                raise ValueError(
                    f"{self.info.name} is an image-to-video model: predict needs the tile's image "
                    "condition (ImageCondition from encode_image)"
                )
            if image.frozen:  # token_replace: the first latent frame is the image's
                x = image.freeze(x)
            else:  # latent_concat: image latent and mask ride along as channels, as the pipeline
                x = torch.cat([x, image.latents.to(x.device, x.dtype)], dim=1)
        guidance = None
        if model.config.guidance_embeds:  # as the pipeline: the scale in the model's dtype, times 1000
            guidance = scale.to(self.device, self.dtype) * 1000.0
        model.rope.set_offset(self.position_offset(offset, p))
        out = model(
            hidden_states=x.to(self.dtype),
            timestep=timestep.to(self.device, torch.float32),  # as the pipeline: bf16 would round t
            encoder_hidden_states=text.to(self.device, self.dtype),
            encoder_attention_mask=mask.to(self.device, self.dtype),
            pooled_projections=pooled.to(self.device, self.dtype),
            guidance=guidance,
            return_dict=False,
        )[0]
        return out.float()

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, num_frames: int) -> ImageCondition:
        """HunyuanVideoImageToVideoPipeline's condition: the image's scaled latent (posterior mode) in
        the first latent frame, zeros in the others, and a mask that is 1 on that frame: after the
        latent for ``latent_concat`` (the pipeline's channel order), before it as a frozen
        condition for ``token_replace``."""
        if not self.info.supports_image:
            return super().encode_image(image, num_frames)
        z = self._encode(image[:, :, None])
        frames = self.info.latent_frames(num_frames)
        first = torch.cat([z, z.new_zeros(1, z.shape[1], frames - 1, *z.shape[3:])], dim=2)
        mark = z.new_zeros(1, 1, frames, *z.shape[3:])
        mark[:, :, 0] = 1
        if self.info.image_frozen:
            return ImageCondition(torch.cat([mark, first], dim=1), None, frozen=True)
        return ImageCondition(torch.cat([first, mark], dim=1), None)

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        with self._vae_lock:
            z = vae.encode(video.to(self.device, torch.float32)).latent_dist.mode()
        return (z * vae.config.scaling_factor).float()

    @torch.no_grad()
    def vae_encode(self, video: torch.Tensor) -> torch.Tensor:
        z = self._encode(video)
        pad = self.info.latent_pad_frames
        if pad:  # latent_concat's dropped first frame: a copy of the first (see the module docstring)
            z = torch.cat([z[:, :, :1].expand(-1, -1, pad, -1, -1), z], dim=2)
        return z

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = latents.to(self.device, torch.float32) / vae.config.scaling_factor
        with self._vae_lock:
            video = vae.decode(z, return_dict=False)[0]
        # latent_concat: the pipeline decodes every latent frame and drops the first frame's video
        video = video[:, :, self.info.latent_pad_frames * self.info.temporal_factor :]
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
    tokens = info.text_tokens - 1  # the packed tensor's token rows, less the pooled row

    def transformer():
        m = HunyuanVideoTransformer3DModel.from_pretrained(
            root, subfolder="transformer", torch_dtype=dtype, **kw
        )
        m.rope = OffsetRotary(m.rope)
        return place(m, device).eval().requires_grad_(False)

    def vae():
        return load_component(
            AutoencoderKLHunyuanVideo, root, "vae", device, tiling=True, torch_dtype=torch.float32
        )

    def text():
        from transformers import AutoTokenizer, CLIPTextModel

        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
        tokenizer_2 = AutoTokenizer.from_pretrained(root, subfolder="tokenizer_2", local_files_only=True)
        clip = CLIPTextModel.from_pretrained(root, subfolder="text_encoder_2", dtype=dtype, **kw)
        parts = dict(
            tokenizer=tokenizer,
            transformer=None,
            vae=None,
            scheduler=None,
            text_encoder_2=place(clip, device).eval(),
            tokenizer_2=tokenizer_2,
        )
        max_length = int(extra.get("max_sequence_length", DEFAULTS.text_tokens))
        run = torch.device(device)
        if info.prompt_sees_image:
            return _image_text_encoder(root, info, extra, parts, dtype, run, max_length, tokens)
        from diffusers import HunyuanVideoPipeline
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
        from transformers import AutoModel

        llama = AutoModel.from_pretrained(root, subfolder="text_encoder", dtype=dtype, **kw)
        pipe = HunyuanVideoPipeline(text_encoder=place(llama, device).eval(), **parts)
        template = extra.get("prompt_template", DEFAULT_PROMPT_TEMPLATE)

        @torch.no_grad()
        def one(prompt: str, guidance: float) -> torch.Tensor:
            embeds, pooled, mask = pipe.encode_prompt(
                prompt=prompt,
                prompt_2=None,
                prompt_template=template,
                device=run,
                max_sequence_length=max_length,
            )
            return pack_prompt(embeds[0].cpu(), mask[0].cpu(), pooled[0].cpu(), guidance, tokens)

        def encode(prompt: str, negative: str, embedded_guidance_scale: float | None = None):
            g = _guidance(info, embedded_guidance_scale)
            return one(prompt, g), one(negative, g)

        return encode

    backend = HunyuanVideoBackend(info, {"transformer": transformer, "vae": vae, "text": text}, device, dtype)
    backend.canvas_positions = extra.get("tile_positions", "canvas") == "canvas"
    return backend


def _guidance(info: ModelInfo, scale: float | None) -> float:
    """The embedded guidance scale a prompt is packed with (0 for a model that takes none)."""
    if scale is not None:
        return float(scale)
    return 0.0 if info.embedded_guidance is None else float(info.embedded_guidance)


def _image_text_encoder(root, info, extra, parts, dtype, device, max_length: int, tokens: int):
    """The I2V prompt encoder: Llava sees the image (the negative prompt a black image), CLIP the
    text, through the pipeline's own ``encode_prompt``."""
    from diffusers import HunyuanVideoImageToVideoPipeline
    from PIL import Image
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    kw = dict(local_files_only=True, use_safetensors=True)
    llava = LlavaForConditionalGeneration.from_pretrained(root, subfolder="text_encoder", dtype=dtype, **kw)
    processor = AutoImageProcessor.from_pretrained(root, subfolder="image_processor", local_files_only=True)
    pipe = HunyuanVideoImageToVideoPipeline(
        text_encoder=place(llava, device).eval(), image_processor=processor, **parts
    )
    template = _i2v_template(extra)
    condition = json.loads((Path(root) / "transformer" / "config.json").read_text())["image_condition_type"]

    @torch.no_grad()
    def one(prompt: str, picture, interleave: int, guidance: float) -> torch.Tensor:
        embeds, pooled, mask = pipe.encode_prompt(
            image=picture,
            prompt=prompt,
            prompt_template=template,
            device=device,
            max_sequence_length=max_length,
            image_embed_interleave=interleave,
        )
        return pack_prompt(embeds[0].cpu(), mask[0].cpu(), pooled[0].cpu(), guidance, tokens)

    def encode(prompt: str, negative: str, image=None, embedded_guidance_scale: float | None = None):
        if image is None:
            raise ValueError(f"{info.name} is an image-to-video model: its prompt encoder needs the image")
        g = _guidance(info, embedded_guidance_scale)
        picture = Image.fromarray(image)
        black = Image.new("RGB", (info.native_width, info.native_height), 0)
        # the pipeline encodes its negative prompt without passing an interleave: 2
        return one(prompt, picture, _INTERLEAVE[condition], g), one(negative, black, 2, g)

    return encode


def save_tiny_pipeline(
    path: str | Path, seed: int = 0, native: tuple[int, int] = (64, 64), image: str | None = None
) -> Path:
    """Save a tiny HunyuanVideo pipeline (transformer, VAE, Llama and CLIP text encoders with word
    tokenizers, flow-matching scheduler with shift 7) in diffusers layout, built in code.

    ``image`` (``"latent_concat"`` or ``"token_replace"``): a ``HunyuanVideoImageToVideoPipeline``
    of that condition type instead, with a tiny Llava (CLIP vision tower of 4 image tokens over
    the same Llama) and an 8x8 CLIP image processor; the ``latent_concat`` one has no guidance
    embeddings (real CFG only), so both kinds of HunyuanVideo model are covered."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoImageToVideoPipeline,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        LlamaConfig,
        LlamaModel,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from pipelines.text import TINY_WORDS, tiny_word_tokenizer

    if image is not None and image not in IMAGE_CONDITIONS:
        raise ValueError(f"image must be one of {list(IMAGE_CONDITIONS)} or None, got {image!r}")
    headers = ["<image>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    words = (
        TINY_WORDS + ["<s>"] + (headers + ["system", "user", "assistant", "describe", ":"] if image else [])
    )
    root = Path(path)
    llama_config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    transformer_config = dict(TINY_TRANSFORMER_CONFIG)
    if image == "latent_concat":  # built without guidance embeddings: a model of real CFG only
        transformer_config.update(
            in_channels=2 * TINY_TRANSFORMER_CONFIG["in_channels"] + 1, guidance_embeds=False
        )
    if image:
        transformer_config.update(image_condition_type=image)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if image:
            vision = CLIPVisionConfig(
                hidden_size=8,
                intermediate_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=8,
                patch_size=4,
            )
            llama = LlavaForConditionalGeneration(
                LlavaConfig(
                    vision_config=vision,
                    text_config=llama_config,
                    image_token_index=words.index("<image>"),
                    image_seq_length=4,
                )
            )
            llama.config.pad_token_id = 0  # the pipeline reads it from the Llava config
        else:
            llama = LlamaModel(llama_config)
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(words),
                hidden_size=8,
                intermediate_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=77,
                pad_token_id=0,
                bos_token_id=words.index("<s>"),
                eos_token_id=1,
            )
        ).eval()
        transformer = HunyuanVideoTransformer3DModel(**transformer_config)
        vae = AutoencoderKLHunyuanVideo(**TINY_VAE_CONFIG)
    tokenizer = tiny_word_tokenizer(words, bos="<s>")
    parts = dict(
        text_encoder=llama.eval(),
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=clip,
        tokenizer_2=tiny_word_tokenizer(words, bos="<s>"),
    )
    overrides: dict[str, Any] = {
        "native_height": native[0],
        "native_width": native[1],
        "native_frames": 9,
        "fps": 8,
        "default_steps": 10,
        "max_sequence_length": 16,
        "embedded_guidance_scale": DEFAULT_EMBEDDED_GUIDANCE,
        "prompt_template": {"template": "describe : {}", "crop_start": 3},
        "description": "tiny random HunyuanVideo pipeline saved from code (tests)",
    }
    if image:
        from transformers import CLIPImageProcessor

        tokenizer.add_special_tokens({"additional_special_tokens": headers})  # whole words, not split
        processor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
        pipe = HunyuanVideoImageToVideoPipeline(image_processor=processor, **parts)
        # the real template's shape: a system turn holding the image, the user turn, the assistant's
        # header (which the pipeline crops out); crop_start: where the user's text starts
        template = (
            "<|start_header_id|> system <|end_header_id|> <image> describe : <|eot_id|> "
            "<|start_header_id|> user <|end_header_id|> {} <|eot_id|> "
            "<|start_header_id|> assistant <|end_header_id|>"
        )
        overrides.update(
            native_frames=5 if image == "latent_concat" else 9,
            prompt_template={
                "template": template,
                "crop_start": 11,
                "image_emb_start": 4,
                "image_emb_end": 8,
                "image_emb_len": 4,
            },
            description=f"tiny random HunyuanVideo I2V ({image}) pipeline saved from code (tests)",
        )
    else:
        pipe = HunyuanVideoPipeline(**parts)
    pipe.save_pretrained(root, safe_serialization=True)
    (root / "supergen.json").write_text(json.dumps(overrides))
    return root
