"""The sketch's pixel-space upscale, one window at a time.

Stage 2 starts from the decoded sketch upscaled bicubically to the output size, padded to the
tile canvas and VAE-encoded. Doing that for the whole high-resolution video on one GPU is a serial
step (and several float32 copies of a 4K video on one card), so each refinement tile encodes its
own window instead. Bicubic interpolation is separable and linear: the upscaled video is
``Wy @ frame @ Wx.T`` with one ``(out, in)`` weight matrix per axis, so any window of it is the
product with a few rows of those matrices, equal to a window of the whole upscale (to float
rounding) however the canvas is split. Padding to the canvas is an index map on those rows.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["bicubic_matrix", "pad_index", "upscale_window", "context_window"]

_A = -0.75  # PyTorch's (and OpenCV's) cubic convolution constant


def _cubic(t: np.ndarray) -> list[np.ndarray]:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions ``t``."""

    def near(x):  # |x| <= 1
        return ((_A + 2) * x - (_A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic_matrix(out_size: int, in_size: int) -> np.ndarray:
    """``(out_size, in_size)`` float64 matrix of ``F.interpolate(mode="bicubic",
    align_corners=False)`` along one axis (taps beyond the edge clamp to the edge sample)."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    weights = _cubic(src - base)
    m = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    for k, w in zip((-1, 0, 1, 2), weights, strict=True):
        idx = np.clip(base.astype(np.int64) + k, 0, in_size - 1)
        np.add.at(m, (rows, idx), w)
    return m


def pad_index(canvas: int, valid: int, mode: str) -> np.ndarray:
    """For each canvas position, the valid position it shows once the image is padded from
    ``valid`` to ``canvas`` at the end (``reflect`` without repeating the edge, or ``replicate``)."""
    idx = np.arange(canvas)
    over = idx >= valid
    if mode == "reflect":
        if canvas - valid >= valid:
            raise ValueError(f"reflect padding of {canvas - valid} needs more than {valid} samples")
        idx[over] = 2 * (valid - 1) - idx[over]
    elif mode == "replicate":
        idx[over] = valid - 1
    else:
        raise ValueError(f"unknown padding mode {mode!r}")
    return idx


def upscale_window(
    frames: np.ndarray,
    out_hw: tuple[int, int],
    canvas_hw: tuple[int, int],
    rows: tuple[int, int],
    cols: tuple[int, int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Window ``rows x cols`` (pixel ``[start, stop)`` on the padded canvas) of the bicubic
    upscale of ``frames`` (``(F, h, w, 3)`` uint8) to ``out_hw``, padded to ``canvas_hw``.

    Returns ``(1, 3, F, r, c)`` float32 in ``[-1, 1]`` on ``device``, ready for the VAE.
    """
    (H, W), (CH, CW) = out_hw, canvas_hw
    _, h, w, _ = frames.shape
    mode = "reflect" if CH - H < H and CW - W < W else "replicate"
    wy = bicubic_matrix(H, h)[pad_index(CH, H, mode)[rows[0] : rows[1]]]
    wx = bicubic_matrix(W, w)[pad_index(CW, W, mode)[cols[0] : cols[1]]]
    # only the source rows/columns the window's taps touch
    ys = np.flatnonzero(np.abs(wy).sum(0) > 0)
    xs = np.flatnonzero(np.abs(wx).sum(0) > 0)
    y_lo, y_hi, x_lo, x_hi = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    src = torch.from_numpy(np.ascontiguousarray(frames[:, y_lo:y_hi, x_lo:x_hi])).to(device)
    src = src.permute(3, 0, 1, 2).float() / 127.5 - 1  # (3, F, y, x)
    my = torch.from_numpy(wy[:, y_lo:y_hi]).float().to(device)
    mx = torch.from_numpy(wx[:, x_lo:x_hi]).float().to(device)
    out = torch.einsum("ry,cfyx,sx->cfrs", my, src, mx)
    return out.clamp(-1, 1)[None]


def context_window(start: int, length: int, margin: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` of a core ``[start, start + length)`` grown by ``margin`` on each side, inside
    ``[0, size)`` (the canvas edge is an edge for the VAE too, as in a whole-video encode)."""
    return max(0, start - margin), min(size, start + length + margin)
