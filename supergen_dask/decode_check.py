"""Region decode against a whole decode: how far the renderer's decode (regions with context
margins, blended on read) lands from decoding the whole latent canvas at once, beside diffusers'
own tiled decode of the same latents.

Pure torch/numpy (no store, no cluster): ``region_decode`` cuts the canvas with
``supergen_dask.plan.decode_regions`` and blends with ``storage.blend.blend_regions``, the same two
functions a render uses, and rounds to uint8 per region and after the blend as a render does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from storage.blend import blend_regions
from supergen_dask.plan import decode_regions

__all__ = ["to_uint8", "region_decode", "whole_decode", "diffusers_tiled_decode", "compare_decodes", "diff"]

Decoder = Callable[[torch.Tensor], torch.Tensor]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(1, 3, F, H, W)`` in [-1, 1] -> ``(F, H, W, 3)`` uint8 (the renderer's conversion)."""
    v = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(1, 2, 3, 0).cpu().numpy()


def region_decode(
    decode: Decoder, z: torch.Tensor, core: tuple[int, int], margin: int, blend: int | None, scale: int
) -> np.ndarray:
    """Decode latents ``(1, C, F, h, w)`` as a render does: cores of ``core`` latent cells with
    ``margin`` cells of context, each to uint8, blended (ramp ``blend`` cells) and rounded."""
    h, w = z.shape[-2:]
    regions = decode_regions(h, w, core[0], core[1], margin)
    pieces = []
    for reg in regions:
        wy, wx, wh, ww = reg.window
        pieces.append((reg, to_uint8(decode(z[..., wy : wy + wh, wx : wx + ww]))))
    out = blend_regions(pieces, scale, h, w, blend)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def whole_decode(vae, z: torch.Tensor) -> np.ndarray:
    """One decode of the whole canvas, diffusers' tiling off."""
    vae.use_tiling = False
    with torch.no_grad():
        return to_uint8(vae.decode(z, return_dict=False)[0])


def diffusers_tiled_decode(vae, z: torch.Tensor, tile_px: int, stride_px: int) -> np.ndarray:
    """diffusers' own tiled decode (``enable_tiling``): tiles of ``tile_px`` pixels every
    ``stride_px``, blended linearly over their overlap."""
    vae.enable_tiling(
        tile_sample_min_height=tile_px,
        tile_sample_min_width=tile_px,
        tile_sample_stride_height=stride_px,
        tile_sample_stride_width=stride_px,
    )
    try:
        with torch.no_grad():
            return to_uint8(vae.tiled_decode(z, return_dict=False)[0])
    finally:
        vae.use_tiling = False


def diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Max and mean absolute difference of two uint8 videos, in /255 units."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max": float(d.max()), "mean": float(d.mean())}


def compare_decodes(
    vae,
    z: torch.Tensor,
    core: tuple[int, int],
    settings: list[tuple[int, int | None]],
    tile_px: int,
    stride_px: int,
) -> dict:
    """Whole decode vs diffusers' tiled decode and vs our region decode at each ``(margin, blend)``
    of ``settings``. Returns ``{"tiled": {...}, "regions": [{"margin", "blend", "max", "mean"}]}``."""
    scale = int(vae.config.scale_factor_spatial or 8)
    whole = whole_decode(vae, z)

    def decode(window: torch.Tensor) -> torch.Tensor:
        vae.use_tiling = False
        with torch.no_grad():
            return vae.decode(window, return_dict=False)[0]

    out = {
        "latents": list(z.shape),
        "core": list(core),
        "tiled": {
            "tile_px": tile_px,
            "stride_px": stride_px,
            **diff(diffusers_tiled_decode(vae, z, tile_px, stride_px), whole),
        },
        "regions": [],
    }
    for margin, blend in settings:
        ours = region_decode(decode, z, tuple(core), margin, blend, scale)
        out["regions"].append({"margin": margin, "blend": blend, **diff(ours, whole)})
    return out
