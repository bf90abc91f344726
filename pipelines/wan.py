"""Wan 2.1 family: diffusers' ``WanTransformer3DModel`` + ``AutoencoderKLWan``.

Three ways to get one:
- a local directory in diffusers layout (``model_index.json`` + ``transformer/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``), loaded with ``from_pretrained`` from disk only;
- ``tiny-random-wan``: a 2-layer random-weight model built in code (the test and default model until
  a trained one ships); its outputs are noise-like and mean nothing;
- ``random-wan2.1-1.3b-shape`` and ``random-wan2.1-14b-shape``: random weights in the exact shape of
  Wan2.1-T2V-1.3B / -14B (for timing on a GPU: random weights cost what real ones cost), with a
  small VAE and hashed prompt embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
    random_vae,
    random_weights,
    read_overrides,
)
from pipelines.text import HashTextEncoder

__all__ = [
    "DEFAULTS",
    "TINY_TRANSFORMER_CONFIG",
    "TINY_VAE_CONFIG",
    "TINY_TI2V_VAE_CONFIG",
    "WanBackend",
    "preset_info",
    "directory_info",
    "check_weights",
    "read_json",
    "load_preset",
    "load_directory",
    "save_tiny_pipeline",
]

DEFAULTS = FamilyDefaults(
    family="wan",
    pipelines=("WanPipeline", "WanImageToVideoPipeline"),
    components=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    native_height=480,
    native_width=832,
    native_frames=81,
    fps=16,
    default_steps=50,
    default_guidance=5.0,
    default_refine_fraction=0.9,
    temporal_factor=4,
    text_tokens=512,
    description="Wan 2.1/2.2 (WanTransformer3DModel + AutoencoderKLWan, UMT5); I2V with --image",
)

FLOW_UNIPC = {
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "num_train_timesteps": 1000,
}

TINY_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)
TINY_VAE_CONFIG: dict[str, Any] = dict(
    base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
)

WAN_1_3B_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
# Wan2.1-T2V-14B: what sets it apart from the 1.3B (dim 5120 = 40 heads of 128)
WAN_14B_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    WAN_1_3B_TRANSFORMER_CONFIG, num_attention_heads=40, ffn_dim=13824, num_layers=40
)
SMALL_VAE_CONFIG: dict[str, Any] = dict(
    base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True]
)


def _real_shape(transformer: dict[str, Any], height: int, width: int, checkpoint: str) -> dict[str, Any]:
    """A timing preset: ``checkpoint``'s transformer shape at its native size, 81 frames at 16 fps,
    with a small random VAE and hashed 512-token prompts."""
    return dict(
        transformer=transformer,
        vae=SMALL_VAE_CONFIG,
        text_len=512,
        info=dict(
            native_height=height,
            native_width=width,
            native_frames=81,
            fps=16,
            default_steps=50,
            default_guidance=5.0,
            description=f"random weights in the shape of {checkpoint} (timing only), small random VAE",
        ),
        device_init=True,
    )


_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-random-wan": dict(
        transformer=TINY_TRANSFORMER_CONFIG,
        vae=TINY_VAE_CONFIG,
        text_len=16,
        info=dict(
            native_height=64,
            native_width=64,
            native_frames=9,
            fps=8,
            default_steps=10,
            default_guidance=5.0,
            description="2-layer Wan transformer with random weights, built in code: output is noise-like",
        ),
    ),
    # random weights in the real checkpoints' shapes, drawn on the GPU (seeded CPU initialisation
    # of the 1.3B's weights took 27 s per worker)
    "random-wan2.1-1.3b-shape": _real_shape(WAN_1_3B_TRANSFORMER_CONFIG, 480, 832, "Wan2.1-T2V-1.3B"),
    "random-wan2.1-14b-shape": _real_shape(WAN_14B_TRANSFORMER_CONFIG, 720, 1280, "Wan2.1-T2V-14B"),
}


def _wan_info(
    name: str, transformer: dict, vae: dict, scheduler_class: str, scheduler_config: dict, **kw
) -> ModelInfo:
    patch = transformer.get("patch_size", (1, 2, 2))
    return ModelInfo(
        name=name,
        family="wan",
        spatial_factor=int(vae.get("scale_factor_spatial") or 8),
        temporal_factor=int(vae.get("scale_factor_temporal") or 4),
        patch_spatial=int(patch[1]),
        # I2V transformers take the image condition as extra input channels: the latents are out_channels
        latent_channels=int(transformer.get("out_channels") or transformer.get("in_channels", 16)),
        scheduler_class=scheduler_class,
        scheduler_config=scheduler_config,
        text_embed_dim=int(transformer.get("text_dim", 4096)),
        **kw,
    )


def preset_info(name: str) -> ModelInfo:
    p = _PRESETS[name]
    return _wan_info(
        name,
        p["transformer"],
        p["vae"],
        "UniPCMultistepScheduler",
        dict(FLOW_UNIPC),
        text_tokens=p["text_len"],
        **p["info"],
    )


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def preset_transformer_config(name: str) -> dict[str, Any]:
    """The transformer config a preset builds its model from (a copy)."""
    return dict(_PRESETS[name]["transformer"])


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_COMPONENTS = ("transformer", "vae", "text_encoder")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a model directory; ``FileNotFoundError`` or ``ValueError`` naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(2, "missing", str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_weights(path: str | Path, components: tuple[str, ...] = WEIGHT_COMPONENTS) -> None:
    """Raise ``ValueError`` naming the component unless each has safetensors weights.

    Weights are only ever loaded from safetensors (pickles can run code), so a component whose
    weights are pickle-only would fail in a worker after the store is written; refuse it while
    planning instead.
    """
    root = Path(path)
    for comp in components:
        folder = root / comp
        files = sorted(f.name for f in folder.iterdir() if f.is_file()) if folder.is_dir() else []
        if any(f.endswith(".safetensors") for f in files):
            continue
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise ValueError(
                f"{folder}: weights are pickle-only ({', '.join(pickles)}); only safetensors are loaded "
                "(convert them, e.g. save_pretrained(..., safe_serialization=True))"
            )
        raise ValueError(f"{folder}: no safetensors weights for the {comp} component")


def directory_info(path: str | Path) -> ModelInfo:
    """Read a diffusers-layout Wan directory's configs (no weights) into a ModelInfo.

    Native size and fps come from an optional ``supergen.json`` beside ``model_index.json``;
    without it, the transformer's width decides (1.3B: 832x480, larger: 1280x720), 81 frames, 16 fps.
    ``supergen.json`` may also name the model's ``prompt_grammar`` (see ``ModelInfo``).
    """
    root = Path(path)
    transformer = read_json(root / "transformer" / "config.json")
    vae = read_json(root / "vae" / "config.json")
    sched = read_json(root / "scheduler" / "scheduler_config.json")
    if not isinstance(sched.get("_class_name"), str):
        raise ValueError(f"{root / 'scheduler' / 'scheduler_config.json'}: no _class_name")
    check_weights(root)
    extra = read_overrides(root)
    inner = transformer.get("num_attention_heads", 12) * transformer.get("attention_head_dim", 128)
    if int(vae.get("scale_factor_spatial") or 8) == 16:  # Wan 2.2 TI2V-5B: 1280x704, 121 frames, 24 fps
        extra = {"native_height": 704, "native_width": 1280, "native_frames": 121, "fps": 24, **extra}
    elif inner > 1536:  # 14B-wide (Wan 2.1 14B, Wan 2.2 A14B): 720p native
        extra = {"native_height": 720, "native_width": 1280, **extra}
    index = json.loads((root / "model_index.json").read_text())
    info = dict(
        **DEFAULTS.overrides(extra),
        description=extra.get("description", f"Wan model from {root}"),
        revision=directory_revision(root),
        supports_image=index.get("_class_name") == "WanImageToVideoPipeline",
    )
    if info["supports_image"]:
        info.update(_image_shape(root, index, transformer))
    if index.get("boundary_ratio") is not None and (index.get("transformer_2") or [None])[0] is not None:
        info["guidance_boundary"] = float(index["boundary_ratio"]) * sched.get("num_train_timesteps", 1000)
    cls = sched.pop("_class_name")
    return _wan_info(str(root), transformer, vae, cls, sched, **info)


def _image_shape(root: Path, index: dict, transformer: dict) -> dict[str, Any]:
    """The I2V condition's shape: its latent-canvas channels (the first-frame mask and encoded
    frames, riding along the latents as the transformer's extra input channels) and, with a CLIP
    image encoder (Wan 2.1), its penultimate hidden states: one token per patch plus the class
    token."""
    channels = int(transformer.get("in_channels", 16)) - int(transformer.get("out_channels") or 16)
    out: dict[str, Any] = {"image_channels": channels}
    if index.get("expand_timesteps"):  # Wan 2.2 TI2V: the first frame's cells are replaced
        out = {"image_channels": 1 + int(transformer.get("out_channels") or 48), "image_frozen": True}
    if (index.get("image_encoder") or [None])[0] is not None:
        clip = read_json(root / "image_encoder" / "config.json")
        side = int(clip.get("image_size", 224)) // int(clip.get("patch_size", 14))
        out.update(image_tokens=side * side + 1, image_embed_dim=int(clip.get("hidden_size", 1280)))
    return out


class WanBackend(LazyBackend):
    """Wan 2.1 text-to-video through diffusers components, loaded lazily per component."""

    def __init__(
        self,
        info: ModelInfo,
        load_transformer: Callable[[], torch.nn.Module],
        load_vae: Callable[[], torch.nn.Module],
        load_text: Callable[[], Callable[[str, str], tuple[torch.Tensor, torch.Tensor]]],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(
            info, {"transformer": load_transformer, "vae": load_vae, "text": load_text}, device, dtype
        )

    # Wan 2.2: A14B switches to a second (low-noise) expert below a boundary timestep; TI2V-5B
    # gives the transformer one timestep per token. Set by load_directory from model_index.json.
    boundary_timestep: float | None = None
    expand_timesteps: bool = False

    def load_transformer(self) -> None:
        self._get("transformer")
        if self.boundary_timestep is not None:
            self._get("transformer_2")

    def expert(self, timestep: torch.Tensor) -> torch.nn.Module:
        """The transformer that denoises at ``timestep`` (the pipeline's rule: the high-noise one
        at and above the boundary)."""
        if self.boundary_timestep is None or float(timestep.reshape(-1)[0]) >= self.boundary_timestep:
            return self.transformer
        return self._get("transformer_2")

    @torch.no_grad()
    def predict(self, latents, timestep, embeds, offset=(0, 0), image=None):
        model = self.expert(timestep)
        t = timestep.to(self.device)
        x = latents.to(self.device, self.dtype)
        image_embeds = None
        if self.info.supports_image:
            if image is None or image.latents is None:
                raise ValueError(
                    f"{self.info.name} is an image-to-video model: predict needs the tile's image "
                    "condition (ImageCondition from encode_image)"
                )
            if image.frozen:  # Wan 2.2 TI2V: the first frame's cells are the image's, at t = 0
                x = image.freeze(x)
            else:  # Wan 2.1 I2V: the mask and encoded first frame ride along as input channels
                x = torch.cat([x, image.latents.to(self.device, self.dtype)], dim=1)
            if image.embeds is not None:
                image_embeds = image.embeds.to(self.device, self.dtype)
        if self.expand_timesteps:
            _, ph, pw = model.config.patch_size
            b, _, f, h, w = latents.shape
            t = t.reshape(b, 1).expand(b, f * (h // ph) * (w // pw))
            if image is not None and image.frozen:  # the pipeline's per-token timesteps
                moving = 1 - image.latents[:, 0, :, ::ph, ::pw].to(t.device, t.dtype)
                t = t * moving.reshape(moving.shape[0], -1)
        out = model(
            hidden_states=x,
            timestep=t,
            encoder_hidden_states=embeds.to(self.device, self.dtype),
            encoder_hidden_states_image=image_embeds,
            return_dict=False,
        )[0]
        return out.float()

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, num_frames: int) -> ImageCondition:
        """WanImageToVideoPipeline's condition: a first-frame mask (4 channels, one per frame of
        the VAE's temporal group) and the normalised latents of ``[image, black, ...]``, plus the
        CLIP image encoder's penultimate hidden states when the model has one (Wan 2.1)."""
        if not self.info.supports_image:
            return super().encode_image(image, num_frames)
        if self.expand_timesteps:
            return self._frozen_first_frame(image, num_frames)
        vae = self.vae
        _, _, H, W = image.shape
        f = self.info.temporal_factor
        video = torch.cat([image[:, :, None], image.new_zeros(1, 3, num_frames - 1, H, W)], dim=2)
        with self._vae_lock:
            z = vae.encode(video.to(self.device, torch.float32)).latent_dist.mode()
        mean, std = self._latent_stats(z)
        z = (z - mean) / std
        frames, h, w = z.shape[2:]
        mask = torch.zeros(1, f * frames, h, w, device=z.device)
        mask[:, :f] = 1  # the first pixel frame, repeated over the first latent frame's group
        mask = mask.view(1, frames, f, h, w).transpose(1, 2)
        embeds = None
        encoder = self._get("image") if "image" in self._loaders else None
        if encoder is not None:
            embeds = encoder(image)
        return ImageCondition(torch.cat([mask, z], dim=1).float(), embeds)

    def _frozen_first_frame(self, image: torch.Tensor, num_frames: int) -> ImageCondition:
        """Wan 2.2 TI2V's condition: the image alone, encoded and normalised, frozen into the first
        latent frame (channel 0: 1 there, 0 elsewhere; then the values)."""
        with self._vae_lock:
            z = self.vae.encode(image[:, :, None].to(self.device, torch.float32)).latent_dist.mode()
        mean, std = self._latent_stats(z)
        z = (z - mean) / std
        frames = self.info.latent_frames(num_frames)
        keep = z.new_zeros(1, 1, frames, *z.shape[3:])
        keep[:, :, 0] = 1
        values = torch.cat([z, z.new_zeros(1, z.shape[1], frames - 1, *z.shape[3:])], dim=2)
        return ImageCondition(torch.cat([keep, values], dim=1).float(), None, frozen=True)

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(cfg.latents_std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    def _tile_vae_for(self, height: int, width: int) -> None:
        """Let the VAE tile internally only for inputs well past the native size: the renderer
        already hands it tile-sized windows, and tiling those again costs many small calls."""
        if hasattr(self.vae, "use_tiling"):
            info = self.info
            self.vae.use_tiling = height * width > 2 * info.native_height * info.native_width

    @torch.no_grad()
    def vae_encode(self, video: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        with self._vae_lock:
            self._tile_vae_for(*video.shape[-2:])
            z = vae.encode(video.to(self.device, torch.float32)).latent_dist.mode()
        mean, std = self._latent_stats(z)
        return ((z - mean) / std).float()

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = latents.to(self.device, torch.float32)
        mean, std = self._latent_stats(z)
        with self._vae_lock:
            f = self.info.spatial_factor
            self._tile_vae_for(z.shape[-2] * f, z.shape[-1] * f)
            video = vae.decode(z * std + mean, return_dict=False)[0]
        return video.clamp(-1, 1).float()


def load_preset(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> WanBackend:
    """A random-weight preset: weights drawn from fixed seeds, identical on every worker (of one
    kind of device: presets marked ``device_init`` draw on the GPU when they run on one)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    p = _PRESETS[name]
    info = preset_info(name)

    def transformer():
        build = lambda: WanTransformer3DModel(**p["transformer"])  # noqa: E731
        on_device = bool(p.get("device_init"))
        return cast_weights(random_weights(build, device, dtype, on_device=on_device), device, dtype)

    def vae():
        return random_vae(lambda: AutoencoderKLWan(**p["vae"]), device)

    def text():
        enc = HashTextEncoder(p["transformer"]["text_dim"], p["text_len"], seed=3)
        return lambda prompt, negative: (enc(prompt), enc(negative))

    return WanBackend(info, transformer, vae, text, device, dtype)


def _vae_class(root: str | Path):
    """The autoencoder class named in ``vae/config.json`` (Wan's VAE or the toy's exact one)."""
    from diffusers import AutoencoderKLWan

    name = json.loads((Path(root) / "vae" / "config.json").read_text()).get("_class_name", "AutoencoderKLWan")
    if name == "AutoencoderKLWan":
        return AutoencoderKLWan
    if name == "SpaceToDepthAutoencoder":
        from pipelines.toy.model import SpaceToDepthAutoencoder

        return SpaceToDepthAutoencoder
    raise ValueError(f"{root}: unsupported autoencoder class {name!r}")


def load_directory(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> WanBackend:
    """A Wan model saved in diffusers layout on local disk (safetensors only, no hub access)."""
    from diffusers import WanTransformer3DModel

    root = str(path)
    info = directory_info(root)

    def transformer(subfolder: str = "transformer"):
        return load_component(WanTransformer3DModel, root, subfolder, device, torch_dtype=dtype)

    def vae():
        return load_component(_vae_class(root), root, "vae", device, tiling=True, torch_dtype=torch.float32)

    def text():
        from diffusers import WanPipeline
        from transformers import AutoTokenizer, UMT5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
        encoder = load_component(UMT5EncoderModel, root, "text_encoder", device, torch_dtype=dtype)
        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=None, scheduler=None)
        max_len = info.text_tokens

        @torch.no_grad()
        def encode(prompt: str, negative: str):
            pos, neg = pipe.encode_prompt(
                prompt,
                negative,
                do_classifier_free_guidance=True,
                max_sequence_length=max_len,
                device=torch.device(device),
            )
            return pos[0], neg[0]

        return encode

    backend = WanBackend(info, transformer, vae, text, device, dtype)
    index = json.loads((Path(root) / "model_index.json").read_text())
    if (index.get("image_encoder") or [None])[0] is not None:

        def image_encoder():
            from transformers import CLIPImageProcessor, CLIPVisionModel

            processor = CLIPImageProcessor.from_pretrained(
                root, subfolder="image_processor", local_files_only=True
            )
            encoder = load_component(CLIPVisionModel, root, "image_encoder", device, dtype=torch.float32)

            @torch.no_grad()
            def encode(image: torch.Tensor) -> torch.Tensor:
                # back to the uint8 picture the pipeline's processor is given
                pixels = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                inputs = processor(images=pixels.permute(1, 2, 0).cpu().numpy(), return_tensors="pt")
                out = encoder(pixel_values=inputs.pixel_values.to(device), output_hidden_states=True)
                return out.hidden_states[-2].float()

            return encode

        backend._loaders["image"] = image_encoder
    if index.get("boundary_ratio") is not None and (index.get("transformer_2") or [None])[0] is not None:
        sched = json.loads((Path(root) / "scheduler" / "scheduler_config.json").read_text())
        backend.boundary_timestep = float(index["boundary_ratio"]) * sched.get("num_train_timesteps", 1000)
        backend._loaders["transformer_2"] = lambda: transformer("transformer_2")
    backend.expand_timesteps = bool(index.get("expand_timesteps", False))
    return backend


TINY_TI2V_VAE_CONFIG: dict[str, Any] = dict(
    base_dim=3,
    z_dim=48,
    in_channels=12,
    out_channels=12,
    is_residual=True,
    patch_size=2,
    latents_mean=[0.0] * 48,
    latents_std=[1.0] * 48,
    dim_mult=[1, 1, 1, 1],
    num_res_blocks=1,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
    temperal_downsample=[False, True, True],
)


def save_tiny_pipeline(
    path: str | Path, seed: int = 0, native: tuple[int, int] = (64, 64), variant: str = "2.1"
) -> Path:
    """Save a tiny Wan pipeline (transformer, VAE, UMT5 text encoder, word-level tokenizer,
    UniPC scheduler) in diffusers layout, built entirely in code. Used to test loading from disk.

    ``variant``: ``"2.1"``; ``"2.2-a14b"`` (a second, low-noise expert ``transformer_2`` switched
    in below ``boundary_ratio`` 0.875, as Wan2.2-T2V-A14B); ``"2.2-ti2v"`` (Wan2.2-TI2V-5B's
    48-channel 16x VAE and per-token timesteps); ``"2.1-i2v"`` (WanImageToVideoPipeline: the
    first-frame condition as 20 extra input channels, a CLIP vision encoder's image tokens);
    ``"2.2-ti2v-i2v"`` (TI2V-5B saved as WanImageToVideoPipeline: its first latent frame is the
    image's, frozen).
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from pipelines.text import TINY_WORDS, tiny_word_tokenizer

    if variant not in ("2.1", "2.2-a14b", "2.2-ti2v", "2.1-i2v", "2.2-ti2v-i2v"):
        raise ValueError(f"unknown tiny Wan variant {variant!r}")
    root = Path(path)
    words = TINY_WORDS
    tcfg = dict(TINY_TRANSFORMER_CONFIG)
    vcfg = TINY_VAE_CONFIG
    if variant.startswith("2.2-ti2v"):
        tcfg.update(in_channels=48, out_channels=48)
        vcfg = TINY_TI2V_VAE_CONFIG
    if variant == "2.1-i2v":  # the transformer of diffusers' I2V pipeline test
        tcfg.update(in_channels=36, image_dim=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = UMT5EncoderModel(
            UMT5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4)
        ).eval()
        transformer = WanTransformer3DModel(**tcfg)
        vae = AutoencoderKLWan(**vcfg)
        transformer_2 = WanTransformer3DModel(**tcfg) if variant == "2.2-a14b" else None
        image_encoder = None
        if variant == "2.1-i2v":
            from transformers import CLIPVisionConfig, CLIPVisionModel

            image_encoder = CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=4,
                    projection_dim=4,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    image_size=32,
                    intermediate_size=16,
                    patch_size=1,
                )
            ).eval()
    scheduler = UniPCMultistepScheduler(**FLOW_UNIPC)
    extra: dict[str, Any] = {}
    if variant == "2.2-a14b":
        extra = dict(transformer_2=transformer_2, boundary_ratio=0.875)
    elif variant.startswith("2.2-ti2v"):
        extra = dict(expand_timesteps=True)
    pipeline_class = WanPipeline
    if variant == "2.2-ti2v-i2v":
        from diffusers import WanImageToVideoPipeline

        pipeline_class = WanImageToVideoPipeline
    if variant == "2.1-i2v":
        from diffusers import WanImageToVideoPipeline
        from transformers import CLIPImageProcessor

        pipeline_class = WanImageToVideoPipeline
        extra = dict(image_encoder=image_encoder, image_processor=CLIPImageProcessor(crop_size=32, size=32))
    pipe = pipeline_class(
        tokenizer=tiny_word_tokenizer(words),
        text_encoder=encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
        **extra,
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
                "description": f"tiny random Wan {variant} pipeline saved from code (tests)",
            }
        )
    )
    return root
