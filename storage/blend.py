"""Blending decoded regions into whole frames: pure numpy, no store.

Each decode region owns a ``core`` of the latent canvas and decodes a larger ``window`` around it
for context (``storage.layout.DecodeRegion``). Neighbouring windows overlap; a region's pixels are
weighted by a linear ramp ``blend`` latent cells wide, centred on the core boundary that faces a
neighbour, so the weights of two neighbours sum to 1 across it. The part of the window outside the
ramp (nearest the window's edge, where the decoder sees the least context) gets weight 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from storage.layout import DecodeRegion

__all__ = ["blend_weights", "blend_regions"]


def _axis(core0: int, core_n: int, win0: int, win_n: int, valid: int, scale: int, blend: int | None):
    pos = np.arange(win0 * scale, (win0 + win_n) * scale, dtype=np.float32) + 0.5
    w = np.ones_like(pos)
    lo_margin = (core0 - win0) * scale
    hi_margin = (win0 + win_n - core0 - core_n) * scale
    if core0 > 0 and lo_margin > 0:  # a neighbour above/left: ramp over [edge - r, edge + r)
        r = lo_margin if blend is None else min(lo_margin, blend * scale / 2)
        edge = core0 * scale
        w = np.minimum(w, np.clip((pos - (edge - r)) / (2 * r), 0, 1))
    if core0 + core_n < valid and hi_margin > 0:
        r = hi_margin if blend is None else min(hi_margin, blend * scale / 2)
        edge = (core0 + core_n) * scale
        w = np.minimum(w, np.clip(((edge + r) - pos) / (2 * r), 0, 1))
    return w


def blend_weights(
    region: DecodeRegion, scale: int, valid_h: int, valid_w: int, blend: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column weights (pixel units) of ``region``'s decoded window.

    ``blend`` is the ramp's width in latent cells (at most twice the margin); ``None`` ramps over
    the whole overlap (``2 * margin``), the layout of stores written before the setting existed.
    """
    cy, cx, ch, cw = region.core
    wy0, wx0, wh, ww = region.window
    return (
        _axis(cy, ch, wy0, wh, valid_h, scale, blend),
        _axis(cx, cw, wx0, ww, valid_w, scale, blend),
    )


def blend_regions(
    pieces: Iterable[tuple[DecodeRegion, np.ndarray]],
    scale: int,
    valid_h: int,
    valid_w: int,
    blend: int | None = None,
) -> np.ndarray:
    """Blend decoded windows ``(F, wh * scale, ww * scale, C)`` into whole frames (float32, in the
    pieces' value range). Raises ``ValueError`` if the regions leave a pixel uncovered."""
    H, W = valid_h * scale, valid_w * scale
    acc = None
    wsum = np.zeros((H, W), dtype=np.float32)
    for reg, pix in pieces:
        wy, wx = blend_weights(reg, scale, valid_h, valid_w, blend)
        y0, x0, wh, ww = (v * scale for v in reg.window)
        if acc is None:
            acc = np.zeros((pix.shape[0], H, W, pix.shape[-1]), dtype=np.float32)
        weight = wy[:, None] * wx[None, :]
        acc[:, y0 : y0 + wh, x0 : x0 + ww] += pix.astype(np.float32) * weight[None, :, :, None]
        wsum[y0 : y0 + wh, x0 : x0 + ww] += weight
    if acc is None or np.any(wsum <= 0):
        raise ValueError("decoded regions do not cover the frame")
    return acc / wsum[None, :, :, None]
