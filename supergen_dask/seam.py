"""The seam pass: the last refinement step again on a grid shifted by about half a tile, blended in.

Shifting the grid between steps hides every step's tile borders under the next step's tiles,
except the last step's: nothing comes after it, and its borders stay visible in the final video
(seam score 1.4-1.5 against about 1.0 for clean video, ``reports/quality.md``). The seam pass runs
the last step again, from the same input and scheduler history, on windows centred on the last
grid's border crossings (the grid shifted by about half a tile on each axis that has more than
one tile), and each window writes the blend of its own prediction and the last step's:

    final = w * seam + (1 - w) * last,   w = d_seam / (d_last + d_seam)

with ``d_last`` and ``d_seam`` the distances of a cell to the nearest border of the last grid and
of the seam grid, less the one cell that touches a border: ``w`` is exactly 1 in the cells beside
the last grid's borders (whose seams it replaces) and exactly 0 beside the seam grid's own, so
neither grid's borders show except in the cells where they cross.
The seam windows tile the canvas exactly, so each chunk of the result has one writer.

The shift is half a tile moved to the middle of a transformer patch (``seam_shift``): the model
cuts each window into patches of ``patch`` cells from the window's corner, and a patch boundary
leaves a small step of its own in the prediction. The last grid's borders are patch boundaries of
the last step; a pass shifted by exactly half a tile (a whole number of patches) would put its
own patch boundaries on them again, while the shift of ``seam_shift`` puts each of them inside a
patch of the pass, and the pass's borders inside patches of the last step
(``reports/seam-pass.md``, 8 toy prompts at 4x: the last grid's seam score was 1.21x the clean
video's at the same borders with the exact half tile, 1.03x with the shift to mid-patch).

It costs one tile call per tile: ``1 / refine_steps`` of the refinement. The plan includes it when
``seam.enabled`` and that fraction is at most ``seam.max-extra``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from supergen_dask.geometry import TileGrid, TileKey

__all__ = ["SeamPlan", "seam_plan", "seam_shift", "border_distance", "window_border_distance", "seam_weight"]


@dataclass(frozen=True)
class SeamPlan:
    """The seam pass of a render: refine step ``step`` again on ``grid`` shifted by ``offset``;
    ``last_offset`` is the offset of the grid it blends with (the last refinement step's)."""

    grid: TileGrid
    step: int
    timestep: float
    offset: tuple[int, int]
    last_offset: tuple[int, int]
    latent_frames: int
    channels: int
    name: str = "seam"

    @property
    def steps(self) -> tuple[int, ...]:
        return (self.step,)

    @property
    def timesteps(self) -> tuple[float, ...]:
        return (self.timestep,)

    @property
    def offsets(self) -> tuple[tuple[int, int], ...]:
        """The grid offset of each of ``steps`` (the layout's)."""
        return (self.offset,)

    @property
    def first(self) -> int:
        return self.step

    @property
    def last(self) -> int:
        return self.step

    def keys(self, step: int | None = None) -> list[TileKey]:
        return [TileKey(self.name, self.step, r, c) for r, c in self.grid.tiles()]

    def origin(self, key: TileKey) -> tuple[int, int]:
        return self.grid.origin(key.row, key.col, self.offset)

    def covering(self, step: int, y0: int, x0: int, h: int, w: int) -> list[TileKey]:
        """The seam windows a canvas window overlaps (``step`` is the pass's one step)."""
        return [TileKey(self.name, self.step, r, c) for r, c in self.grid.covering(y0, x0, h, w, self.offset)]

    def weight(self, key: TileKey) -> np.ndarray:
        """``(tile_h, tile_w)`` weight of the seam prediction in ``key``'s window."""
        y0, x0 = self.origin(key)
        g = self.grid
        return seam_weight(y0, x0, g.tile_h, g.tile_w, g, self.last_offset, self.offset)

    def to_dict(self) -> dict:
        return {
            "grid": self.grid.to_dict(),
            "step": self.step,
            "timestep": self.timestep,
            "offset": list(self.offset),
            "last_offset": list(self.last_offset),
            "latent_frames": self.latent_frames,
            "channels": self.channels,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SeamPlan:
        return cls(
            grid=TileGrid(**d["grid"]),
            step=int(d["step"]),
            timestep=float(d["timestep"]),
            offset=tuple(d["offset"]),
            last_offset=tuple(d["last_offset"]),
            latent_frames=int(d["latent_frames"]),
            channels=int(d["channels"]),
        )


def seam_shift(tile: int, patch: int = 1) -> int:
    """The seam grid's shift from the last grid on an axis of ``tile`` cells, for a transformer
    with patches of ``patch`` cells: the shift nearest half a tile that is ``patch // 2`` past a
    whole number of patches, so that every border of either grid lies inside a patch of the other's
    windows, in its middle when ``patch`` is even (``tile`` is a multiple of ``patch``)."""
    if patch < 1 or tile < patch or tile % patch:
        raise ValueError(f"tile {tile} must be a positive multiple of the patch {patch}")
    half = tile // 2
    return half - half % patch + patch // 2


def seam_plan(refine, enabled: bool, max_extra: float, patch: int = 1) -> SeamPlan | None:
    """The seam pass for a refinement stage (a ``StagePlan``) of a transformer with spatial patches
    of ``patch`` latent cells, or None: when off, when the grid is one tile, or when one more tile
    call per tile costs more than ``max_extra`` of the refinement's (``1 / refine_steps``)."""
    g = refine.grid
    if not enabled or g.n_tiles < 2 or 1 / len(refine.steps) > max_extra:
        return None
    oy, ox = refine.offset(refine.last)
    offset = (
        (oy + seam_shift(g.tile_h, patch)) % g.tile_h if g.rows > 1 else oy,
        (ox + seam_shift(g.tile_w, patch)) % g.tile_w if g.cols > 1 else ox,
    )
    return SeamPlan(
        grid=g,
        step=refine.last,
        timestep=refine.timesteps[-1],
        offset=offset,
        last_offset=(oy, ox),
        latent_frames=refine.latent_frames,
        channels=refine.channels,
    )


def border_distance(start: int, n: int, offset: int, tile: int, size: int, tiles: int) -> np.ndarray:
    """Distance (cells, from cell centres) of canvas cells ``start .. start + n`` (wrapping) to the
    nearest border of a grid of ``tile`` cells shifted by ``offset`` on a torus of ``size``; an axis
    of a single tile has no borders (infinite distance)."""
    pos = (np.arange(start, start + n) % size) + 0.5
    if tiles < 2:
        return np.full(n, np.inf)
    phase = (pos - offset) % tile
    return np.minimum(phase, tile - phase)


def window_border_distance(
    y0: int, x0: int, h: int, w: int, grid: TileGrid, offset: tuple[int, int]
) -> np.ndarray:
    """``(h, w)`` distance (cells) of each cell of a canvas window to the nearest border, on either
    axis, of ``grid`` shifted by ``offset`` (``border_distance`` per axis)."""
    dy = border_distance(y0, h, offset[0], grid.tile_h, grid.canvas_h, grid.rows)
    dx = border_distance(x0, w, offset[1], grid.tile_w, grid.canvas_w, grid.cols)
    return np.minimum(dy[:, None], dx[None, :])


def seam_weight(
    y0: int,
    x0: int,
    h: int,
    w: int,
    grid: TileGrid,
    last_offset: tuple[int, int],
    seam_offset: tuple[int, int],
) -> np.ndarray:
    """``(h, w)`` weight of the seam prediction over a canvas window: ``d_seam / (d_last + d_seam)``
    (1 on the last grid's borders, 0 on the seam grid's)."""
    # distances beyond the cells that touch a border: those cells take one grid whole
    d_last = np.maximum(window_border_distance(y0, x0, h, w, grid, last_offset) - 1, 0)
    d_seam = np.maximum(window_border_distance(y0, x0, h, w, grid, seam_offset) - 1, 0)
    with np.errstate(invalid="ignore"):
        out = d_seam / (d_last + d_seam)
    # the few cells that touch both grids' borders (where they cross) take half of each
    return np.nan_to_num(out, nan=0.5).astype(np.float32)
