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

__all__ = ["blend_weights", "blend_regions", "blend_regions_uint8"]


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


def _cuts(bounds: set[int]) -> list[tuple[int, int]]:
    edges = sorted(bounds)
    return list(zip(edges[:-1], edges[1:], strict=True))


def blend_regions_uint8(
    pieces: Iterable[tuple[DecodeRegion, np.ndarray]],
    scale: int,
    valid_h: int,
    valid_w: int,
    blend: int | None = None,
) -> np.ndarray:
    """``blend_regions`` of uint8 windows, rounded to uint8 frames ``(F, H, W, C)``: the same
    bytes, computed in floating point only where regions share a pixel.

    A pixel that one region alone weighs is that region's value: ``w * v / w`` is ``v`` to within
    a few float32 roundings, far less than the 0.5 that rounding to an integer forgives. Only the
    cross-fades are blended (18% of a 4K frame of 5x5 regions at ``decode.blend`` 8), the rest
    copied: 8 frames of that 4K layout in 0.5 s instead of 4.7 s on a CPU. Where regions share a
    pixel, its terms are summed in the same order and precision as ``blend_regions`` (which also
    adds the zero terms of regions that only give context there: adding zero changes no sum).
    Raises ``ValueError`` if the regions leave a pixel uncovered.
    """
    H, W = valid_h * scale, valid_w * scale
    # each region's rectangle of non-zero weight, in frame pixels: (y0, y1, x0, x1, pixels, wy, wx)
    parts = []
    frames = channels = None
    for reg, pix in pieces:
        if pix.dtype != np.uint8:
            raise TypeError(f"blend_regions_uint8 blends uint8 windows, got {pix.dtype}")
        frames, channels = pix.shape[0], pix.shape[-1]
        wy, wx = blend_weights(reg, scale, valid_h, valid_w, blend)
        ys, xs = np.flatnonzero(wy > 0), np.flatnonzero(wx > 0)
        if not len(ys) or not len(xs):
            continue
        a, b, c, d = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        y0, x0 = reg.window[0] * scale, reg.window[1] * scale
        parts.append((y0 + a, y0 + b, x0 + c, x0 + d, pix[:, a:b, c:d], wy[a:b], wx[c:d]))
    if not parts:
        raise ValueError("decoded regions do not cover the frame")
    out = np.empty((frames, H, W, channels), dtype=np.uint8)
    # cells between every rectangle's edges: each is inside or outside each rectangle, whole
    rows = _cuts({0, H, *(p[0] for p in parts), *(p[1] for p in parts)})
    cols = _cuts({0, W, *(p[2] for p in parts), *(p[3] for p in parts)})
    for r0, r1 in rows:
        for c0, c1 in cols:
            here = [p for p in parts if p[0] <= r0 and r1 <= p[1] and p[2] <= c0 and c1 <= p[3]]
            if not here:
                raise ValueError("decoded regions do not cover the frame")
            if len(here) == 1:
                y0, _, x0, _, pix, _, _ = here[0]
                out[:, r0:r1, c0:c1] = pix[:, r0 - y0 : r1 - y0, c0 - x0 : c1 - x0]
                continue
            acc = wsum = None
            for y0, _, x0, _, pix, wy, wx in here:
                ys, xs = slice(r0 - y0, r1 - y0), slice(c0 - x0, c1 - x0)
                weight = wy[ys, None] * wx[None, xs]
                term = pix[:, ys, xs].astype(np.float32) * weight[None, :, :, None]
                acc = term if acc is None else np.add(acc, term, out=acc)
                wsum = weight if wsum is None else wsum + weight
            out[:, r0:r1, c0:c1] = np.clip(np.rint(acc / wsum[None, :, :, None]), 0, 255)
    return out
