"""Gaussian noise that depends only on (seed, stream, canvas position).

The canvas is cut into fixed ``BLOCK x BLOCK`` cells; each cell's noise (all frames and channels)
comes from its own generator, seeded by a hash of (seed, stream, cell row, cell col). Any window can
be produced by any worker, in any tiling, and is bit-identical to the same cells of the whole canvas.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["BLOCK", "position_noise", "window_noise"]

BLOCK = 16


def _cell_seed(seed: int, stream: str, by: int, bx: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{stream}:{by}:{bx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def position_noise(
    seed: int, stream: str, frames: int, channels: int, y0: int, x0: int, h: int, w: int
) -> torch.Tensor:
    """Standard normal noise ``(frames, channels, h, w)`` for the window at ``(y0, x0)``.

    Coordinates are absolute canvas cells (non-negative, no wrap): callers that need a wrapped
    window ask for its pieces.
    """
    if min(y0, x0) < 0 or min(h, w, frames, channels) <= 0:
        raise ValueError("window must have non-negative origin and positive size")
    out = torch.empty(frames, channels, h, w)
    for by in range(y0 // BLOCK, (y0 + h - 1) // BLOCK + 1):
        for bx in range(x0 // BLOCK, (x0 + w - 1) // BLOCK + 1):
            g = torch.Generator().manual_seed(_cell_seed(seed, stream, by, bx))
            cell = torch.randn(frames, channels, BLOCK, BLOCK, generator=g)
            ys, xs = max(y0, by * BLOCK), max(x0, bx * BLOCK)
            ye, xe = min(y0 + h, (by + 1) * BLOCK), min(x0 + w, (bx + 1) * BLOCK)
            out[:, :, ys - y0 : ye - y0, xs - x0 : xe - x0] = cell[
                :, :, ys - by * BLOCK : ye - by * BLOCK, xs - bx * BLOCK : xe - bx * BLOCK
            ]
    return out


def window_noise(
    seed: int,
    stream: str,
    frames: int,
    channels: int,
    y0: int,
    x0: int,
    h: int,
    w: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """``position_noise`` for a window that may wrap around a ``height x width`` torus canvas."""
    rows = [(y0 % height, min(h, height - y0 % height))]
    if rows[0][1] < h:
        rows.append((0, h - rows[0][1]))
    cols = [(x0 % width, min(w, width - x0 % width))]
    if cols[0][1] < w:
        cols.append((0, w - cols[0][1]))
    return torch.cat(
        [
            torch.cat(
                [position_noise(seed, stream, frames, channels, ya, xa, yn, xn) for xa, xn in cols], dim=-1
            )
            for ya, yn in rows
        ],
        dim=-2,
    )
