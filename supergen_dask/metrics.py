"""Quality metrics for rendered videos (uint8 ``(F, H, W, 3)`` RGB arrays; numpy and scipy only).

- ``seam_score`` / ``grid_lines``: gradient energy across tile borders relative to the interior;
  ``seam_scores`` scores many grids (every refinement step's) from one pass over the pixels.
- ``colour_mask`` / ``count_objects`` / ``duplication``: does the prompted object appear exactly once?
- ``detail_gain``: high-frequency energy of a refined video relative to its upscaled sketch.
- ``temporal_flicker`` / ``object_mask``: frame-to-frame luma change of the (static) background.
- ``psnr`` / ``ssim``: fidelity of one render to another (e.g. cached vs uncached).

Single frames ``(H, W, 3)`` are accepted wherever a video is, and treated as a one-frame video
(except ``count_objects``, which then returns a plain int).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "luma",
    "grid_lines",
    "seam_score",
    "seam_scores",
    "seam_profiles",
    "SeamProfiles",
    "colour_mask",
    "count_objects",
    "duplication",
    "object_mask",
    "detail_gain",
    "laplacian_energy",
    "temporal_flicker",
    "psnr",
    "ssim",
]

DEFAULT_TOL = 100.0
"""Default Euclidean RGB tolerance of ``colour_mask``: half the distance between the closest pair of
toy object colours, and well beyond H.264 colour error on flat regions."""

MIN_AREA_FRACTION = 0.002
"""Default smallest connected component counted as an object, as a fraction of the frame's pixels
(a small toy object covers about 1.8% of a square frame)."""


def _as_video(video: np.ndarray) -> np.ndarray:
    """View a ``(H, W, 3)`` frame or ``(F, H, W, 3)`` video as ``(F, H, W, 3)``."""
    video = np.asarray(video)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected (F, H, W, 3) or (H, W, 3), got shape {video.shape}")
    return video


def luma(video: np.ndarray) -> np.ndarray:
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` as float64 in [0, 255], shape ``(F, H, W)``."""
    v = _as_video(video).astype(np.float64)
    return v @ np.array([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------------------------- seams


def grid_lines(offset: float, tile: float, size: float, scale: float = 1) -> np.ndarray:
    """Border positions, in pixels, of a tile grid on a torus.

    Tiles of ``tile`` latent units start at ``offset + k * tile`` (mod ``size``); their borders are
    scaled by ``scale`` (the VAE's spatial factor) and only those strictly inside
    ``(0, size * scale)`` are kept (a border at 0 is the frame edge, not a seam).

    Parameters
    ----------
    offset : float
        Shift of the grid in latent units (any value; taken modulo ``size``).
    tile : float
        Tile size in latent units (> 0). When ``size`` is not a multiple of ``tile`` the short
        wrap-around tile's end is included too.
    size : float
        Latent extent of the axis.
    scale : float
        Pixels per latent unit.

    Returns
    -------
    np.ndarray
        Sorted unique int64 pixel positions (a border at ``p`` lies between pixels ``p-1`` and ``p``).

    Examples
    --------
    >>> grid_lines(3, 8, 16, 8).tolist()
    [24, 88]
    """
    if tile <= 0 or size <= 0:
        raise ValueError(f"tile and size must be positive, got tile={tile}, size={size}")
    n = int(np.ceil(size / tile))
    latent = np.mod(offset + tile * np.arange(n + 1), size)
    pixels = np.rint(latent * scale).astype(np.int64)
    return np.unique(pixels[(pixels > 0) & (pixels < size * scale)])


def _border_index(positions: Sequence[int] | np.ndarray, n: int, band: int) -> np.ndarray:
    """Boolean ``(n - 1,)`` over adjacent pairs ``(i, i+1)``: True for pairs at a border band."""
    at = np.zeros(n - 1, bool)
    for p in np.unique(np.asarray(positions, dtype=np.int64)):
        if 0 < p < n:
            # pair (p-1, p) has index p-1; the band widens it by band-1 pairs on each side
            at[max(0, p - band) : min(n - 1, p + band - 1)] = True
    return at


@dataclass(frozen=True)
class SeamProfiles:
    """Everything ``seam_score`` needs from a video, whatever the grid: its gradient profiles.

    ``row_total[i]`` is the summed absolute difference (averaged over RGB) between pixel rows
    ``i`` and ``i + 1``, over all frames and columns, counting only unmasked pairs;
    ``row_count[i]`` is the number of pairs summed. ``col_*`` likewise between columns ``j`` and
    ``j + 1``. A grid's score only sums entries of these, so one pass over the pixels
    (``seam_profiles``) serves every refinement step's grid (``score``, ``seam_scores``).
    """

    row_total: np.ndarray  # (H - 1,) float64
    row_count: np.ndarray  # (H - 1,) float64
    col_total: np.ndarray  # (W - 1,) float64
    col_count: np.ndarray  # (W - 1,) float64

    @property
    def height(self) -> int:
        return len(self.row_total) + 1

    @property
    def width(self) -> int:
        return len(self.col_total) + 1

    def score(
        self, rows: Sequence[int] | np.ndarray = (), cols: Sequence[int] | np.ndarray = (), band: int = 1
    ) -> float:
        """``seam_score`` of the video these profiles came from, at the borders ``rows``/``cols``."""
        if band < 1:
            raise ValueError(f"band must be >= 1, got {band}")
        h, w = self.height, self.width
        row_at = _border_index(rows, h, band) if h > 1 else np.zeros(0, bool)
        col_at = _border_index(cols, w, band) if w > 1 else np.zeros(0, bool)
        border_sum = expected = n_border = 0.0
        for total, count, at in (
            (self.row_total, self.row_count, row_at),
            (self.col_total, self.col_count, col_at),
        ):
            if not at.any():
                continue
            n_int = count[~at].sum()
            interior = total[~at].sum() / n_int if n_int else 0.0
            border_sum += total[at].sum()
            expected += count[at].sum() * interior
            n_border += count[at].sum()
        if n_border == 0:
            return float("nan")
        if expected == 0:
            return 1.0 if border_sum == 0 else float("inf")
        return float(border_sum / expected)


def seam_profiles(
    video: np.ndarray, exclude_mask: np.ndarray | None = None, frames_per_chunk: int = 4
) -> SeamProfiles:
    """The gradient profiles of a video (see ``SeamProfiles``), in one pass over its pixels.

    Parameters
    ----------
    video : np.ndarray
        ``(F, H, W, 3)`` or ``(H, W, 3)``. Integer videos (uint8) are summed exactly in integers.
    exclude_mask : np.ndarray, optional
        Boolean ``(F, H, W)``, True on pixels to ignore: a pair is left out when either pixel is.
    frames_per_chunk : int
        Frames differenced at a time (bounds the memory: about 20 bytes per pixel of a chunk).
    """
    v = _as_video(video)
    f, h, w, _ = v.shape
    keep = None
    if exclude_mask is not None:
        keep = ~np.asarray(exclude_mask, bool)
        if keep.shape != (f, h, w):
            raise ValueError(f"exclude_mask shape {keep.shape} != {(f, h, w)}")
    # |a - b| of uint8 fits int16 and its sum over RGB (<= 765) too; sums over frames and pixels
    # are taken in int64, so integer videos give exact totals
    work = np.int16 if v.dtype.kind in "ub" and v.dtype.itemsize == 1 else np.float64
    rows = np.zeros(max(h - 1, 0), np.float64 if work is np.float64 else np.int64)
    cols = np.zeros(max(w - 1, 0), rows.dtype)
    row_n = np.zeros(len(rows), np.int64)
    col_n = np.zeros(len(cols), np.int64)
    step = max(1, int(frames_per_chunk))
    for s in range(0, f, step):
        x = v[s : s + step].astype(work)
        k = None if keep is None else keep[s : s + step]
        for axis, total, count in ((1, rows, row_n), (2, cols, col_n)):
            d = np.subtract(x[:, 1:], x[:, :-1]) if axis == 1 else np.subtract(x[:, :, 1:], x[:, :, :-1])
            np.abs(d, out=d)  # (c, H-1, W, 3) or (c, H, W-1, 3)
            other = (0, 2) if axis == 1 else (0, 1)
            if k is None:
                total += d.sum(axis=(*other, 3))  # one reduction, no per-pixel RGB sum
            else:
                kk = k[:, 1:] & k[:, :-1] if axis == 1 else k[:, :, 1:] & k[:, :, :-1]
                total += np.where(kk, d.sum(axis=-1), 0).sum(axis=other)
                count += kk.sum(axis=other)
            del d
    if keep is None:
        row_n[:], col_n[:] = f * w, f * h
    return SeamProfiles(rows / 3.0, row_n.astype(np.float64), cols / 3.0, col_n.astype(np.float64))


def seam_scores(
    video: np.ndarray,
    grids: Sequence[tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray]],
    band: int = 1,
    exclude_mask: np.ndarray | None = None,
) -> list[float]:
    """``seam_score`` of one video at many grids (e.g. every refinement step's), computing the
    image gradients once: ``[seam_score(video, rows, cols, band, exclude_mask) for rows, cols in
    grids]`` at the cost of one call plus a few sums over ``H + W`` numbers per grid."""
    if band < 1:
        raise ValueError(f"band must be >= 1, got {band}")
    grids = list(grids)
    if not grids:
        return []
    profiles = seam_profiles(video, exclude_mask)
    return [profiles.score(rows, cols, band) for rows, cols in grids]


def seam_score(
    video: np.ndarray,
    rows: Sequence[int] | np.ndarray = (),
    cols: Sequence[int] | np.ndarray = (),
    band: int = 1,
    exclude_mask: np.ndarray | None = None,
) -> float:
    """Gradient energy across tile borders relative to the rest of the frame.

    The border pairs are the vertically adjacent pixels ``(r-1, r)`` for each ``r`` in ``rows`` and
    the horizontally adjacent ``(c-1, c)`` for each ``c`` in ``cols``; with ``band > 1`` the
    ``band - 1`` pairs on either side count as border too (for seams blurred over a few pixels).
    Differences are absolute, averaged over RGB, pooled over all frames. The score is the summed
    border difference divided by what the border pairs would sum to at the interior's mean
    difference of the same orientation::

        score = (sum_rows |dy| + sum_cols |dx|) / (N_rows * mean_int |dy| + N_cols * mean_int |dx|)

    which is the plain ratio "mean difference at borders / mean difference elsewhere" for
    isotropic content, but is not fooled by content whose gradients run mostly one way.
    To score many grids on one video, use ``seam_scores`` (the gradients are computed once).

    Parameters
    ----------
    video : np.ndarray
        ``(F, H, W, 3)`` or ``(H, W, 3)``.
    rows, cols : sequence of int
        Pixel positions of horizontal (``rows``) and vertical (``cols``) borders; positions ``<= 0``
        or ``>=`` the frame size are ignored, either may be empty.
    band : int
        Width of the border band in pairs on each side (1: just the pair straddling the border).
    exclude_mask : np.ndarray, optional
        Boolean ``(F, H, W)``, True on pixels to ignore (e.g. ``object_mask`` of a moving object,
        whose edges otherwise dominate the statistics of simple content): a pair is dropped from
        both the border and the interior statistics when either of its pixels is masked.

    Returns
    -------
    float
        About 1 for seamless content, above 1 when borders show. NaN when no border lies inside
        the frame (or every border pair is excluded); 1.0 for perfectly flat content; inf when only the borders have any gradient.
    """
    if band < 1:
        raise ValueError(f"band must be >= 1, got {band}")
    _, h, w, _ = _as_video(video).shape
    inside = [p for p in np.asarray(rows).ravel() if 0 < p < h] + [
        p for p in np.asarray(cols).ravel() if 0 < p < w
    ]
    if not inside:
        return float("nan")  # no border in the frame: skip the pass over the pixels
    return seam_profiles(video, exclude_mask).score(rows, cols, band)


# ------------------------------------------------------------------------------------ object counting


def colour_mask(video: np.ndarray, colour_rgb: Sequence[float], tol: float = DEFAULT_TOL) -> np.ndarray:
    """Pixels within Euclidean RGB distance ``tol`` of ``colour_rgb``.

    Parameters
    ----------
    video : np.ndarray
        ``(..., 3)`` uint8 (a frame or a video).
    colour_rgb : sequence of 3 numbers
    tol : float
        Distance threshold in 0..255 units. The default accepts anti-aliased edge pixels of at
        least about half coverage and compression error, and rejects the toy backgrounds.

    Returns
    -------
    np.ndarray
        Boolean mask of shape ``video.shape[:-1]``.
    """
    video = np.asarray(video)
    diff = video.astype(np.float32) - np.asarray(colour_rgb, np.float32)
    return np.einsum("...c,...c->...", diff, diff) < np.float32(tol) ** 2


def _default_min_area(h: int, w: int) -> int:
    return max(4, round(MIN_AREA_FRACTION * h * w))


def count_objects(
    frame_or_video: np.ndarray,
    colour_rgb: Sequence[float],
    min_area: int | None = None,
    tol: float = DEFAULT_TOL,
) -> int | np.ndarray:
    """Number of separate blobs of a colour, per frame.

    Blobs are 8-connected components of ``colour_mask`` with at least ``min_area`` pixels.

    Parameters
    ----------
    frame_or_video : np.ndarray
        ``(H, W, 3)`` or ``(F, H, W, 3)`` uint8.
    colour_rgb : sequence of 3 numbers
    min_area : int, optional
        Smallest component counted, in pixels; default ``MIN_AREA_FRACTION`` of the frame (>= 4).
    tol : float
        Colour tolerance (see ``colour_mask``).

    Returns
    -------
    int or np.ndarray
        An int for a frame, an int64 ``(F,)`` array of per-frame counts for a video.
    """
    arr = np.asarray(frame_or_video)
    single = arr.ndim == 3
    video = _as_video(arr)
    _, h, w, _ = video.shape
    if min_area is None:
        min_area = _default_min_area(h, w)
    mask = colour_mask(video, colour_rgb, tol)
    structure = np.ones((3, 3), bool)
    counts = np.zeros(len(video), np.int64)
    for f, m in enumerate(mask):
        labels, n = ndimage.label(m, structure=structure)
        if n:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            counts[f] = int((sizes >= min_area).sum())
    return int(counts[0]) if single else counts


def duplication(
    video: np.ndarray,
    colour_rgb: Sequence[float],
    min_area: int | None = None,
    tol: float = DEFAULT_TOL,
) -> dict:
    """Does the object of a colour appear exactly once?

    Returns
    -------
    dict
        ``counts``: per-frame counts (``count_objects``); ``median``: their median (float);
        ``fraction_one``: fraction of frames with exactly one object; ``exactly_one``: median == 1.
    """
    counts = np.atleast_1d(count_objects(_as_video(video), colour_rgb, min_area, tol))
    median = float(np.median(counts))
    return {
        "counts": counts,
        "median": median,
        "fraction_one": float(np.mean(counts == 1)),
        "exactly_one": bool(median == 1),
    }


def object_mask(
    video: np.ndarray,
    colour_rgb: Sequence[float],
    dilate: int | None = None,
    tol: float = DEFAULT_TOL,
) -> np.ndarray:
    """Colour mask of an object, dilated within each frame to cover its anti-aliased/ringing rim.

    Parameters
    ----------
    video : np.ndarray
        ``(F, H, W, 3)`` or ``(H, W, 3)``.
    dilate : int, optional
        Dilation radius in pixels (square neighbourhood); default 2% of the shorter side, >= 2.

    Returns
    -------
    np.ndarray
        Boolean ``(F, H, W)``.
    """
    v = _as_video(video)
    _, h, w, _ = v.shape
    if dilate is None:
        dilate = max(2, round(0.02 * min(h, w)))
    mask = colour_mask(v, colour_rgb, tol)
    if dilate > 0:
        structure = np.zeros((3, 3, 3), bool)
        structure[1] = True  # grow within a frame, never across time
        mask = ndimage.binary_dilation(mask, structure=structure, iterations=int(dilate))
    return mask


# --------------------------------------------------------------------------------- detail & flicker


def laplacian_energy(video: np.ndarray) -> float:
    """Fine detail of a video: the mean squared 5-point spatial Laplacian of its luma (interior
    pixels, per frame, pooled); what ``detail_gain`` compares."""
    y = luma(video)
    lap = y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:] - 4 * y[:, 1:-1, 1:-1]
    return float(np.mean(lap**2)) if lap.size else 0.0


def detail_gain(
    output: np.ndarray, reference: np.ndarray | None = None, *, reference_energy: float | None = None
) -> float:
    """High-frequency energy of ``output`` relative to ``reference``.

    Energy is ``laplacian_energy``: the mean squared 5-point spatial Laplacian of the luma
    (interior pixels, per frame, pooled). ``reference`` is typically the bicubic-upscaled sketch
    at the output's size; give ``reference_energy`` (its ``laplacian_energy``) instead when it was
    measured before, e.g. while the video was still being made.

    Returns
    -------
    float
        > 1 when ``output`` has more fine detail than ``reference``; inf when the reference is
        perfectly flat (nan when both are).
    """
    if (reference is None) == (reference_energy is None):
        raise ValueError("give either reference or reference_energy")
    out = _as_video(output)
    if reference is not None:
        ref = _as_video(reference)
        if out.shape != ref.shape:
            raise ValueError(f"shapes differ: {out.shape} vs {ref.shape}")
        reference_energy = laplacian_energy(ref)
    e_out, e_ref = laplacian_energy(out), float(reference_energy)
    if e_ref == 0:
        return float("nan") if e_out == 0 else float("inf")
    return e_out / e_ref


def temporal_flicker(video: np.ndarray, exclude_mask: np.ndarray | None = None) -> float:
    """Mean absolute frame-to-frame luma change, in 0..255 luma units.

    Parameters
    ----------
    video : np.ndarray
        ``(F, H, W, 3)``.
    exclude_mask : np.ndarray, optional
        Boolean ``(F, H, W)``, True on moving objects (see ``object_mask``). A pixel's change from
        frame t to t+1 is ignored when it is masked in either frame. None: use every pixel.

    Returns
    -------
    float
        0.0 for fewer than two frames; nan when every pixel pair is excluded.
    """
    y = luma(video)
    if len(y) < 2:
        return 0.0
    change = np.abs(np.diff(y, axis=0))
    if exclude_mask is None:
        return float(change.mean())
    m = np.asarray(exclude_mask, bool)
    if m.shape != y.shape:
        raise ValueError(f"exclude_mask shape {m.shape} != {y.shape}")
    keep = ~(m[1:] | m[:-1])
    if not keep.any():
        return float("nan")
    return float(change[keep].mean())


# ---------------------------------------------------------------------------------------- fidelity


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels (data range 255).

    inf for identical inputs.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(255.0**2 / mse))


_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5: an 11x11 window
_SSIM_PAD = 5


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of the luma, averaged over frames.

    Standard SSIM (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
    data range 255, population (not sample) statistics. Local statistics are computed with
    reflected borders and the 5-pixel rim (where the window is incomplete) is dropped before
    averaging, as scikit-image does; frames smaller than 11 pixels are averaged whole.

    Returns
    -------
    float
        1.0 for identical inputs; lower is less similar.
    """
    ya, yb = luma(a), luma(b)
    if ya.shape != yb.shape:
        raise ValueError(f"shapes differ: {ya.shape} vs {yb.shape}")
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    sigma = (0, _SSIM_SIGMA, _SSIM_SIGMA)  # never blur across time

    def blur(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma=sigma, mode="reflect", truncate=_SSIM_TRUNCATE)

    mu_a, mu_b = blur(ya), blur(yb)
    var_a = blur(ya * ya) - mu_a**2
    var_b = blur(yb * yb) - mu_b**2
    cov = blur(ya * yb) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    smap = num / den
    _, h, w = smap.shape
    p = _SSIM_PAD
    if h > 2 * p and w > 2 * p:
        smap = smap[:, p:-p, p:-p]
    return float(smap.mean(axis=(1, 2)).mean())
