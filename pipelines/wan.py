"""Wan 2.1 family: diffusers' ``WanTransformer3DModel`` + ``AutoencoderKLWan``.

Three ways to get one:
- a local directory in diffusers layout (``model_index.json`` + ``transformer/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``), loaded with ``from_pretrained`` from disk only;
- ``tiny-random-wan``: a 2-layer random-weight model built in code (the test and default model until
  a trained one ships); its outputs are noise-like and mean nothing;
- ``random-wan2.1-1.3b-shape``: random weights in the exact shape of Wan2.1-T2V-1.3B (for timing on
  a GPU: random weights cost what real ones cost), with a small VAE and hashed prompt embeddings.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipelines.base import ModelInfo, VideoBackend
from pipelines.text import HashTextEncoder

__all__ = [
    "TINY_TRANSFORMER_CONFIG",
    "TINY_VAE_CONFIG",
    "WanBackend",
    "preset_info",
    "directory_info",
    "check_weights",
    "read_json",
    "load_preset",
    "load_directory",
    "save_tiny_pipeline",
]

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
SMALL_VAE_CONFIG: dict[str, Any] = dict(
    base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True]
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
    "random-wan2.1-1.3b-shape": dict(
        transformer=WAN_1_3B_TRANSFORMER_CONFIG,
        vae=SMALL_VAE_CONFIG,
        text_len=512,
        info=dict(
            native_height=480,
            native_width=832,
            native_frames=81,
            fps=16,
            default_steps=50,
            default_guidance=5.0,
            description="random weights in the shape of Wan2.1-T2V-1.3B (timing only), small random VAE",
        ),
    ),
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
        latent_channels=int(transformer.get("in_channels", 16)),
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
    """
    root = Path(path)
    transformer = read_json(root / "transformer" / "config.json")
    vae = read_json(root / "vae" / "config.json")
    sched = read_json(root / "scheduler" / "scheduler_config.json")
    if not isinstance(sched.get("_class_name"), str):
        raise ValueError(f"{root / 'scheduler' / 'scheduler_config.json'}: no _class_name")
    check_weights(root)
    extra: dict[str, Any] = {}
    if (root / "supergen.json").exists():
        extra = read_json(root / "supergen.json")
    revision = hashlib.sha256()
    for part in sorted(root.rglob("*")):
        if part.is_file():
            rel = str(part.relative_to(root))
            # configs by content, weights by size (hashing gigabytes of weights would be slow)
            revision.update(
                rel.encode()
                + (part.read_bytes() if part.suffix == ".json" else str(part.stat().st_size).encode())
            )
    inner = transformer.get("num_attention_heads", 12) * transformer.get("attention_head_dim", 128)
    small = inner <= 1536
    info = dict(
        native_height=extra.get("native_height", 480 if small else 720),
        native_width=extra.get("native_width", 832 if small else 1280),
        native_frames=extra.get("native_frames", 81),
        fps=extra.get("fps", 16),
        default_steps=extra.get("default_steps", 50),
        default_guidance=extra.get("default_guidance", 5.0),
        description=extra.get("description", f"Wan model from {root}"),
        text_tokens=int(extra.get("max_sequence_length", 512)),
        default_refine_fraction=float(extra.get("default_refine_fraction", 0.9)),
        revision=revision.hexdigest()[:16],
    )
    cls = sched.pop("_class_name")
    return _wan_info(str(root), transformer, vae, cls, sched, **info)


class WanBackend(VideoBackend):
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
        super().__init__(info, device, dtype)
        self._loaders = {"transformer": load_transformer, "vae": load_vae, "text": load_text}
        self._components: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        # The VAE keeps per-call feature caches on the module: one call at a time per process.
        self._vae_lock = threading.Lock()

    def _get(self, name: str):
        comp = self._components.get(name)
        if comp is None:
            with self._load_lock:
                comp = self._components.get(name)
                if comp is None:
                    comp = self._loaders[name]()
                    self._components[name] = comp
        return comp

    @property
    def transformer(self) -> torch.nn.Module:
        return self._get("transformer")

    @property
    def vae(self) -> torch.nn.Module:
        return self._get("vae")

    def load_transformer(self) -> None:
        self._get("transformer")

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        pos, neg = self._get("text")(prompt, negative_prompt)
        return pos.float().cpu(), neg.float().cpu()

    @torch.no_grad()
    def predict(self, latents, timestep, embeds, offset=(0, 0)):
        out = self.transformer(
            hidden_states=latents.to(self.device, self.dtype),
            timestep=timestep.to(self.device),
            encoder_hidden_states=embeds.to(self.device, self.dtype),
            return_dict=False,
        )[0]
        return out.float()

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(cfg.latents_std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    @torch.no_grad()
    def vae_encode(self, video: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        with self._vae_lock:
            z = vae.encode(video.to(self.device, torch.float32)).latent_dist.mode()
        mean, std = self._latent_stats(z)
        return ((z - mean) / std).float()

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = latents.to(self.device, torch.float32)
        mean, std = self._latent_stats(z)
        with self._vae_lock:
            video = vae.decode(z * std + mean, return_dict=False)[0]
        return video.clamp(-1, 1).float()


def _cast(model: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to ``device`` in ``dtype``, keeping the modules the model wants in float32 (as
    ``from_pretrained(torch_dtype=...)`` does)."""
    model = model.to(device=device)
    if dtype != torch.float32:
        keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
        for name, module in model.named_modules():
            if name and any(k in name.split(".") for k in keep):
                continue
            for p in module.parameters(recurse=False):
                p.data = p.data.to(dtype)
            for b_name, b in module.named_buffers(recurse=False):
                if b.is_floating_point():
                    module._buffers[b_name] = b.to(dtype)
    return model.eval().requires_grad_(False)


def _seeded(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def load_preset(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> WanBackend:
    """A random-weight preset: weights drawn from fixed seeds, identical on every worker."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    p = _PRESETS[name]
    info = preset_info(name)

    def transformer():
        return _cast(_seeded(lambda: WanTransformer3DModel(**p["transformer"]), 1), device, dtype)

    def vae():
        m = _cast(_seeded(lambda: AutoencoderKLWan(**p["vae"]), 2), device, torch.float32)
        m.enable_tiling()
        return m

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
    kw = dict(local_files_only=True, use_safetensors=True)

    def transformer():
        m = WanTransformer3DModel.from_pretrained(root, subfolder="transformer", torch_dtype=dtype, **kw)
        return m.to(device).eval().requires_grad_(False)

    def vae():
        m = _vae_class(root).from_pretrained(root, subfolder="vae", torch_dtype=torch.float32, **kw)
        m = m.to(device).eval().requires_grad_(False)
        m.enable_tiling()
        return m

    def text():
        from diffusers import WanPipeline
        from transformers import AutoTokenizer, UMT5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
        encoder = UMT5EncoderModel.from_pretrained(root, subfolder="text_encoder", torch_dtype=dtype, **kw)
        encoder = encoder.to(device).eval().requires_grad_(False)
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

    return WanBackend(info, transformer, vae, text, device, dtype)


def save_tiny_pipeline(path: str | Path, seed: int = 0, native: tuple[int, int] = (64, 64)) -> Path:
    """Save a tiny Wan pipeline (transformer, VAE, UMT5 text encoder, word-level tokenizer,
    UniPC scheduler) in diffusers layout, built entirely in code. Used to test loading from disk."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    root = Path(path)
    words = [
        "<pad>",
        "</s>",
        "<unk>",
        "a",
        "red",
        "green",
        "blue",
        "circle",
        "square",
        "moving",
        "left",
        "right",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = UMT5EncoderModel(
            UMT5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4)
        ).eval()
        transformer = WanTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
        vae = AutoencoderKLWan(**TINY_VAE_CONFIG)
    scheduler = UniPCMultistepScheduler(**FLOW_UNIPC)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=scheduler, transformer=transformer
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
                "description": "tiny random Wan pipeline saved from code (tests)",
            }
        )
    )
    return root
