"""The toy text-to-video model, built from real classes so it loads like a real checkpoint.

- transformer: diffusers' ``WanTransformer3DModel`` (6 layers, 4 heads of 64), trained;
- autoencoder: ``SpaceToDepthAutoencoder``, an exact one: each 4x4 pixel block becomes 48 latent
  channels (pixel unshuffle), normalised per channel; decoding is the exact inverse. Nothing is
  lost and nothing is learned, so every quality effect measured on the toy comes from the
  denoiser and the tiling, not from an autoencoder's artefacts;
- text: a word-level tokenizer over the procedural grammar plus a small ``UMT5EncoderModel``,
  trained with the transformer, used through the same prompt-encoding code as Wan's T5;
- scheduler: ``UniPCMultistepScheduler`` for flow matching (shift 1).

Saved in diffusers layout, it loads through ``pipelines.wan.load_directory`` like any Wan model.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from pipelines.toy.procedural import (
    BG_COLOURS,
    BG_STYLES,
    COLOURS,
    DIRECTIONS,
    PROMPT_GRAMMAR,
    SHAPES,
    SIZES,
)

__all__ = [
    "SpaceToDepthAutoencoder",
    "TOY_TRANSFORMER_CONFIG",
    "TOY_TEXT_CONFIG",
    "TOY_SCHEDULER_CONFIG",
    "TOY_NATIVE",
    "TOY_TEXT_TOKENS",
    "toy_vocabulary",
    "build_tokenizer",
    "build_text_encoder",
    "build_transformer",
    "encode_prompts",
    "save_toy_pipeline",
    "weights_dir",
]

TOY_NATIVE = {"native_height": 64, "native_width": 64, "native_frames": 9, "fps": 8}
TOY_TEXT_TOKENS = 16
TOY_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=64,
    in_channels=48,
    out_channels=48,
    text_dim=64,
    freq_dim=256,
    ffn_dim=1024,
    num_layers=6,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=1024,
)
TOY_TEXT_CONFIG: dict[str, Any] = dict(
    d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4, dropout_rate=0.0
)
TOY_SCHEDULER_CONFIG: dict[str, Any] = dict(
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0, num_train_timesteps=1000
)


class _Point:
    """A degenerate latent distribution: the encoding is exact."""

    def __init__(self, z: torch.Tensor):
        self._z = z

    def mode(self) -> torch.Tensor:
        return self._z

    def sample(self, generator=None) -> torch.Tensor:
        return self._z


class SpaceToDepthAutoencoder(ModelMixin, ConfigMixin):
    """Exact video autoencoder: ``(B, 3, F, H, W)`` <-> ``(B, 3*f*f*g, 1 + (F-1)/g, H/f, W/f)``.

    Each ``f x f`` pixel block goes to channels; with a temporal factor ``g`` > 1 each group of
    ``g`` frames does too, after the first frame, which is a latent frame of its own (repeated
    ``g`` times to fill the channels), as in Wan's causal VAE. Grouping frames into channels tells
    the denoiser which way time runs: with ``g = 1`` a Wan transformer, whose only sense of time is
    its rotary embedding, is nearly symmetric under playing its input backwards (see
    ``scripts/toy_diagnostics.py``).

    Same interface as diffusers' video VAEs (``encode(x).latent_dist.mode()``, ``decode(z)``,
    ``config.latents_mean``/``latents_std``, ``scale_factor_spatial``/``scale_factor_temporal``).
    The normalisation statistics live in the config, as Wan's do; the backend applies them.
    """

    @register_to_config
    def __init__(
        self,
        factor: int = 4,
        in_channels: int = 3,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        z_dim: int | None = None,
        scale_factor_spatial: int | None = None,
        scale_factor_temporal: int = 1,
    ):
        super().__init__()
        g = scale_factor_temporal
        z = in_channels * factor * factor * g
        if g < 1 or z_dim not in (None, z) or scale_factor_spatial not in (None, factor):
            raise ValueError("z_dim/scale factors must match factor, in_channels and the temporal factor")
        self.register_to_config(
            z_dim=z,
            scale_factor_spatial=factor,
            latents_mean=list(latents_mean) if latents_mean is not None else [0.0] * z,
            latents_std=list(latents_std) if latents_std is not None else [1.0] * z,
        )
        # ModelMixin wants at least one tensor to save and load.
        self.register_buffer("version", torch.ones(1))

    def enable_tiling(self, *args, **kwargs) -> None:
        """No-op: the transform is local, any size runs in one pass."""

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        b, c, f, h, w = x.shape
        k, g = self.config.factor, self.config.scale_factor_temporal
        if h % k or w % k:
            raise ValueError(f"frame size {h}x{w} is not a multiple of {k}")
        if (f - 1) % g:
            raise ValueError(f"{f} frames: the temporal factor {g} needs 1 + {g}n frames")
        if g > 1:  # the first frame alone, g times over, then groups of g frames
            x = torch.cat([x[:, :, :1].expand(b, c, g, h, w), x[:, :, 1:]], dim=2)
        lf = x.shape[2] // g
        z = F.pixel_unshuffle(x.permute(0, 2, 1, 3, 4).reshape(b * lf * g, c, h, w), k)
        z = z.reshape(b, lf, g * z.shape[1], h // k, w // k).permute(0, 2, 1, 3, 4)
        out = SimpleNamespace(latent_dist=_Point(z))
        return out if return_dict else (out.latent_dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        b, c, lf, h, w = z.shape
        k, g = self.config.factor, self.config.scale_factor_temporal
        per_frame = c // g
        z = z.permute(0, 2, 1, 3, 4).reshape(b * lf * g, per_frame, h, w)
        x = F.pixel_shuffle(z, k).reshape(b, lf * g, -1, h * k, w * k).permute(0, 2, 1, 3, 4)
        if g > 1:  # the first latent frame's copies of the first frame, averaged
            x = torch.cat([x[:, :, :g].mean(dim=2, keepdim=True), x[:, :, g:]], dim=2)
        return SimpleNamespace(sample=x) if return_dict else (x,)


def toy_vocabulary() -> list[str]:
    """Special tokens, then every word the procedural grammar can produce."""
    words = {"a", "on", "moving", "background"}
    for group in (SHAPES, COLOURS, SIZES, DIRECTIONS, BG_COLOURS, BG_STYLES):
        words |= set(group)
    return ["<pad>", "</s>", "<unk>"] + sorted(words)


def build_tokenizer():
    """A word-level fast tokenizer over the grammar, built in code (lower-cases, splits words)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = toy_vocabulary()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=TOY_TEXT_TOKENS,
    )


def build_text_encoder(seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UMT5EncoderModel(UMT5Config(vocab_size=len(toy_vocabulary()), **TOY_TEXT_CONFIG))


def build_transformer(seed: int = 0, temporal_factor: int = 1, **overrides):
    """The toy's Wan transformer, its latent channels matched to ``SpaceToDepthAutoencoder``'s
    (48 per frame of a temporal group); ``overrides`` change other config entries."""
    from diffusers import WanTransformer3DModel

    channels = TOY_TRANSFORMER_CONFIG["in_channels"] * temporal_factor
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(
            **{**TOY_TRANSFORMER_CONFIG, "in_channels": channels, "out_channels": channels, **overrides}
        )


def encode_prompts(
    tokenizer, text_encoder, prompts: list[str], max_length: int = TOY_TEXT_TOKENS
) -> torch.Tensor:
    """Prompt embeddings exactly as Wan's pipeline makes them (pad to ``max_length``, zero every
    position past the prompt), but differentiable, for training."""
    enc = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = next(text_encoder.parameters()).device
    ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    hidden = text_encoder(ids, mask).last_hidden_state
    return hidden * mask[..., None].to(hidden.dtype)


def weights_dir() -> Path:
    """Where the shipped toy checkpoint lives (inside the package)."""
    return Path(__file__).with_name("weights")


def save_toy_pipeline(
    path: str | Path,
    transformer,
    text_encoder,
    tokenizer,
    latents_mean: list[float],
    latents_std: list[float],
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
    scheduler: dict[str, Any] | None = None,
    temporal_factor: int = 1,
) -> Path:
    """Write the toy in diffusers layout (weights in ``dtype`` to keep the package small);
    ``scheduler`` overrides entries of ``TOY_SCHEDULER_CONFIG`` (the sampling ``flow_shift``, say)."""
    import copy

    from diffusers import UniPCMultistepScheduler

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    # copies: the caller's models keep training in their own dtype
    copy.deepcopy(transformer).to(dtype).save_pretrained(root / "transformer", safe_serialization=True)
    copy.deepcopy(text_encoder).to(dtype).save_pretrained(root / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(root / "tokenizer")
    SpaceToDepthAutoencoder(
        4, 3, latents_mean, latents_std, scale_factor_temporal=temporal_factor
    ).save_pretrained(root / "vae")
    UniPCMultistepScheduler(**{**TOY_SCHEDULER_CONFIG, **(scheduler or {})}).save_pretrained(
        root / "scheduler"
    )
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "WanPipeline",
                "transformer": ["diffusers", "WanTransformer3DModel"],
                "vae": ["pipelines.toy.model", "SpaceToDepthAutoencoder"],
                "text_encoder": ["transformers", "UMT5EncoderModel"],
                "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
                "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            },
            indent=2,
        )
    )
    info = {
        **TOY_NATIVE,
        "default_steps": 20,
        "default_guidance": 4.0,
        "max_sequence_length": TOY_TEXT_TOKENS,
        "description": "toy Wan trained on procedural videos (shapes of 6 colours moving over gradients/textures)",
        "prompt_grammar": PROMPT_GRAMMAR,
        **(extra or {}),
    }
    (root / "supergen.json").write_text(json.dumps(info, indent=2))
    return root
