"""The one small protocol every model family implements.

A backend wraps the unchanged pretrained components of one model family (transformer, VAE, text
encoder, scheduler config) and exposes what tiled rendering needs: encode a prompt, VAE encode and
decode, predict the noise (or velocity) of a latent tile at a timestep, and make the scheduler.
Components load lazily: a denoise worker never touches the text encoder or the VAE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["ModelInfo", "VideoBackend"]


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model, known without loading any weights.

    Sizes are in pixels unless named ``latent_*``. ``spatial_factor`` is the VAE's spatial
    compression: output sizes must be multiples of it. Latent tiles are multiples of
    ``patch_spatial`` (the transformer's patch). ``default_refine_fraction`` is the share of the
    schedule refined with tiles when a spec leaves k open; ``revision`` fingerprints the weights, so
    a render made with other weights is never resumed with these. ``prompt_grammar`` names the
    closed prompt language a model was trained on, when its prompts can be checked against what
    a render shows (``"toy-shapes"``: ``pipelines.toy``'s grammar, whose object the quality
    record counts); empty for models of open, natural-language prompts.
    """

    name: str
    family: str
    native_height: int
    native_width: int
    native_frames: int
    spatial_factor: int
    temporal_factor: int
    patch_spatial: int
    latent_channels: int
    fps: int
    scheduler_class: str
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    default_steps: int = 50
    default_guidance: float = 5.0
    supports_image: bool = False
    text_embed_dim: int = 0
    text_tokens: int = 512
    default_refine_fraction: float = 0.9
    revision: str = ""
    description: str = ""
    prompt_grammar: str = ""

    def frames_ok(self, num_frames: int) -> bool:
        """Whether the VAE can take ``num_frames`` (causal video VAEs want 1 + k * factor)."""
        return num_frames >= 1 and (num_frames - 1) % self.temporal_factor == 0

    def allowed_frames_hint(self) -> str:
        f = self.temporal_factor
        return f"1 + {f}*k frames (e.g. {1 + f}, {1 + 2 * f}, {1 + 4 * f}, {1 + 20 * f})"

    def latent_frames(self, num_frames: int) -> int:
        return (num_frames - 1) // self.temporal_factor + 1

    def pixel_frames(self, latent_frames: int) -> int:
        return (latent_frames - 1) * self.temporal_factor + 1

    @property
    def native_latent_hw(self) -> tuple[int, int]:
        return self.native_height // self.spatial_factor, self.native_width // self.spatial_factor

    def to_dict(self) -> dict:
        return asdict(self)


class VideoBackend:
    """Base class of the model backends. Subclasses load components lazily.

    Tensor layouts follow diffusers: latents ``(B, C, F, h, w)``, pixel video ``(B, 3, F, H, W)``
    in ``[-1, 1]``. Latents handed to and returned by the VAE methods are *normalised* (the space
    the transformer works in).
    """

    info: ModelInfo

    def __init__(
        self, info: ModelInfo, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ):
        self.info = info
        self.device = torch.device(device)
        self.dtype = dtype

    # -- text ---------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(prompt_embeds, negative_prompt_embeds)``, each ``(L, D)`` float32 on CPU."""
        raise NotImplementedError

    # -- transformer --------------------------------------------------------------------------
    def predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        offset: tuple[int, int] = (0, 0),
    ) -> torch.Tensor:
        """Model output for a batch of latent tiles at one timestep.

        ``latents`` is ``(B, C, F, h, w)``, ``timestep`` ``(B,)``, ``embeds`` ``(B, L, D)``.
        ``offset`` is the tile's top-left position on the canvas in latent cells; models with
        relative (rotary) positions ignore it, models with absolute positions must use it.
        """
        raise NotImplementedError

    def load_transformer(self) -> None:
        """Make sure the denoiser is resident (tasks call this before timing a forward)."""

    # -- VAE ----------------------------------------------------------------------------------
    def vae_encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- scheduler ----------------------------------------------------------------------------
    def make_scheduler(self):
        """A fresh diffusers scheduler for this model (tasks never share a live one)."""
        from pipelines.schedulers import make_scheduler

        return make_scheduler(self.info.scheduler_class, self.info.scheduler_config)
