"""Tile geometry on a torus: tile grids for any canvas size, per-axis shift cycles, overlaps.

Everything here is pure integer arithmetic in *latent* units, so it is testable without a model,
a store or a cluster. A canvas of ``rows x cols`` tiles is treated as a torus: a grid shifted by
``(oy, ox)`` still partitions it exactly, the tiles that run past the bottom or right edge taking
their missing rows and columns from the top or left.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "TILE_POLICIES",
    "TileKey",
    "TileGrid",
    "SHIFT_ORDERS",
    "DEFAULT_SHIFT_ORDER",
    "ShiftSchedule",
    "axis_cover",
    "spread_order",
    "round_up",
]


TILE_POLICIES = ("balanced", "native", "fit", "whole")
SHIFT_ORDERS = ("walk", "spread")
# the published schedule; also what plans stored before the order existed did
DEFAULT_SHIFT_ORDER = "walk"


@functools.cache
def spread_order(period: int) -> tuple[int, ...]:
    """The positions ``0 .. period - 1`` in van der Corput order: the base-2 radical inverse of
    0, 1, 2, ... scaled to ``period``, each position the first time it comes up (16: 0, 8, 4, 12,
    2, 10, ...). Any run of consecutive entries is spread over the cycle: consecutive entries are
    most often half a period apart (16: 8 apart in 8 of 15 moves, 3 at the least), where a walk
    moves by one. Moves by one remain at the wrap from the last entry back to 0, and once inside
    periods of 2**m + 1 (17, 33, ...). Starts at 0."""
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    out: list[int] = []
    seen: set[int] = set()
    bits = max(1, (period - 1).bit_length())
    for c in range(1 << bits):  # 2**bits >= period inverses, 1 / 2**bits apart: every position
        inverse = int(format(c, f"0{bits}b")[::-1], 2)  # c's bits mirrored: radical inverse * 2**bits
        k = (inverse * period) >> bits
        if k not in seen:
            seen.add(k)
            out.append(k)
    return tuple(out)


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


@dataclass(frozen=True, order=True)
class TileKey:
    """Immutable name of one unit of work and of its chunks: (stage, step, row, col).

    ``step`` is the index of the denoising step in the stage's schedule; ``row``/``col`` index the
    tile in that step's (shifted) grid. The same key names the Dask task, the Zarr chunks it writes
    and its row in the per-tile stats.
    """

    stage: str
    step: int
    row: int
    col: int

    def task_key(self, token: str, kind: str = "denoise", *extra: int) -> tuple:
        """Dask key: one stable prefix per task kind (Dask estimates durations per prefix),
        unique per render via ``token``."""
        return (f"{kind}-{token}", self.stage, self.step, self.row, self.col, *extra)


def axis_cover(start: int, length: int, size: int, tile: int, offset: int) -> list[int]:
    """Indices of the tiles of one axis that an interval overlaps.

    The axis has ``size`` cells cut into ``size // tile`` tiles whose first tile starts at
    ``offset`` (mod ``size``). The interval ``[start, start + length)`` is taken mod ``size`` too.
    Returns the distinct tile indices in the order the interval meets them.
    """
    if size % tile:
        raise ValueError(f"axis size {size} is not a multiple of the tile size {tile}")
    if not 0 < length <= size:
        raise ValueError(f"interval length {length} must be in 1..{size}")
    n = size // tile
    out: list[int] = []
    pos = 0
    while pos < length:
        local = (start + pos - offset) % size  # position in the grid's own frame
        index = local // tile
        if index not in out:
            out.append(index)
        pos += tile - local % tile  # jump to the next tile boundary
    return [i % n for i in out]


@dataclass(frozen=True)
class TileGrid:
    """A grid of equal, non-overlapping tiles that partitions a (padded) latent canvas.

    ``valid_h`` x ``valid_w`` is the part of the canvas that maps to the requested output; the
    canvas is padded at the bottom and right to a whole number of tiles and the padding is cropped
    at the end.
    """

    canvas_h: int
    canvas_w: int
    tile_h: int
    tile_w: int
    valid_h: int
    valid_w: int

    def __post_init__(self) -> None:
        if min(self.tile_h, self.tile_w) <= 0:
            raise ValueError("tile sizes must be positive")
        if self.canvas_h % self.tile_h or self.canvas_w % self.tile_w:
            raise ValueError(
                f"canvas {self.canvas_h}x{self.canvas_w} is not a whole number of "
                f"{self.tile_h}x{self.tile_w} tiles"
            )
        if not (0 < self.valid_h <= self.canvas_h and 0 < self.valid_w <= self.canvas_w):
            raise ValueError("the valid region must lie inside the canvas")

    @property
    def rows(self) -> int:
        return self.canvas_h // self.tile_h

    @property
    def cols(self) -> int:
        return self.canvas_w // self.tile_w

    @property
    def n_tiles(self) -> int:
        return self.rows * self.cols

    @classmethod
    def single(cls, height: int, width: int) -> TileGrid:
        """One tile covering the whole canvas (the native-size sketch)."""
        return cls(height, width, height, width, height, width)

    @classmethod
    def for_canvas(
        cls,
        height: int,
        width: int,
        native_h: int,
        native_w: int,
        multiple: int = 1,
        policy: str = "balanced",
    ) -> TileGrid:
        """Derive the tile grid for a ``height`` x ``width`` latent canvas.

        Parameters
        ----------
        height, width
            Latent size of the requested output (the valid region).
        native_h, native_w
            The model's native latent size: the tile the model was trained on.
        multiple
            Tile sides are multiples of this (the transformer's spatial patch size).
        policy
            ``"balanced"`` (default): per axis the fewest tiles of at most the native size that
            cover the canvas, evenly sized (rounded up to ``multiple``) so the padding is under
            one ``multiple`` per tile, but never smaller than 3/4 of native on an axis of several
            tiles (less context than that is a different model regime); an axis shorter than
            native is one tile of its own size. ``"native"``: tiles of the native size (or of the canvas size on an axis shorter than
            native), canvas padded up to a whole number of tiles. ``"fit"``: as few tiles per axis
            as cover the canvas without exceeding native, each shrunk to cover it with the least
            padding. Either way tiles take the canvas's orientation (native or transposed, the same
            token count). ``"whole"``: no tiling, one tile covering the canvas (direct generation
            at the output size, the baseline tiling is compared against).
        """
        if min(height, width, native_h, native_w, multiple) <= 0:
            raise ValueError("sizes must be positive")
        if policy not in TILE_POLICIES:
            raise ValueError(f"tile policy must be one of {TILE_POLICIES}, got {policy!r}")
        if policy == "whole":  # direct generation: one tile, the whole canvas
            ch, cw = round_up(height, multiple), round_up(width, multiple)
            return cls(ch, cw, ch, cw, height, width)

        def axis(valid: int, native: int) -> tuple[int, int]:
            native = max(multiple, native - native % multiple)
            if policy == "native":
                tile = min(native, round_up(valid, multiple))
                return tile, round_up(valid, tile)
            n = -(-valid // native)
            tile = round_up(-(-valid // n), multiple)
            if policy == "balanced" and n > 1:
                tile = max(tile, min(native, round_up(-(-3 * native // 4), multiple)))
            return tile, n * tile

        # Tiles take the canvas's orientation (same token count): a portrait output on a landscape
        # model gets portrait tiles instead of paying for landscape ones.
        nh, nw = native_h, native_w
        if (height > width and nh < nw) or (height < width and nh > nw):
            nh, nw = nw, nh
        th, ch = axis(height, nh)
        tw, cw = axis(width, nw)
        return cls(ch, cw, th, tw, height, width)

    @property
    def padding_waste(self) -> float:
        """Compute spent on padding: the tiles' cells over the valid cells, minus one."""
        return self.n_tiles * self.tile_h * self.tile_w / (self.valid_h * self.valid_w) - 1.0

    def tiles(self) -> Iterator[tuple[int, int]]:
        """All (row, col) of the grid, row-major."""
        for r in range(self.rows):
            for c in range(self.cols):
                yield r, c

    def origin(self, row: int, col: int, offset: tuple[int, int]) -> tuple[int, int]:
        """Canvas coordinates of the top-left cell of tile (row, col) under a grid offset."""
        return (
            (row * self.tile_h + offset[0]) % self.canvas_h,
            (col * self.tile_w + offset[1]) % self.canvas_w,
        )

    def covering(self, y0: int, x0: int, h: int, w: int, offset: tuple[int, int]) -> list[tuple[int, int]]:
        """The tiles of the grid shifted by ``offset`` that a (wrapping) canvas window overlaps."""
        rows = axis_cover(y0, h, self.canvas_h, self.tile_h, offset[0])
        cols = axis_cover(x0, w, self.canvas_w, self.tile_w, offset[1])
        return [(r, c) for r in rows for c in cols]

    def to_dict(self) -> dict:
        return {
            "canvas_h": self.canvas_h,
            "canvas_w": self.canvas_w,
            "tile_h": self.tile_h,
            "tile_w": self.tile_w,
            "valid_h": self.valid_h,
            "valid_w": self.valid_w,
        }


def _period(stride: int, tile: int) -> int:
    """Shifts after which an axis of ``tile`` cells moved ``stride`` a shift is back at 0."""
    return 1 if stride == 0 else tile // math.gcd(stride, tile)


@dataclass(frozen=True)
class ShiftSchedule:
    """Per-step grid offsets: each axis visits its own cycle of multiples of its stride.

    At step ``i`` the shift counter is ``c = i // every``. Each axis has the period
    ``P = tile / gcd(stride, tile)`` and visits every offset that is a multiple of
    ``gcd(stride, tile)`` once per period (a shared modulus for both axes would skip some), in one
    of two orders:

    - ``walk`` (the default, the published schedule): ``(c * stride) mod tile``, one stride
      further each step;
    - ``spread``: ``(spread_order(P)[c mod P] * stride) mod tile``, the same offsets visited
      about half a period apart from one step to the next. A step's borders then lie deep inside
      the next steps' tiles instead of one stride from their edges, where the walk leaves them,
      so the last steps do not leave their seams in one narrow band (``reports/seam-pass.md``).

    An axis with a single tile is never shifted: rolling a lone tile would only put the opposite
    edges of the frame side by side.
    """

    tile_h: int
    tile_w: int
    stride_y: int
    stride_x: int
    every: int = 1
    # plans stored before the order existed walked; they resume with the offsets they began with
    order: str = DEFAULT_SHIFT_ORDER

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("shift 'every' must be >= 1")
        if self.order not in SHIFT_ORDERS:
            raise ValueError(f"shift order must be one of {SHIFT_ORDERS}, got {self.order!r}")
        if self.stride_y < 0 or self.stride_x < 0:
            raise ValueError("shift strides must be >= 0")

    @classmethod
    def none(cls, grid: TileGrid) -> ShiftSchedule:
        return cls(grid.tile_h, grid.tile_w, 0, 0, 1)

    @classmethod
    def for_grid(
        cls,
        grid: TileGrid,
        divisions: int = 16,
        every: int = 1,
        stride: tuple[int, int] | None = None,
        order: str = DEFAULT_SHIFT_ORDER,
    ) -> ShiftSchedule:
        """SuperGen's stride of ``tile // divisions`` per axis, every ``every`` steps, visited in
        ``order``."""
        if stride is None:
            stride = (max(1, grid.tile_h // divisions), max(1, grid.tile_w // divisions))
        sy = stride[0] % grid.tile_h if grid.rows > 1 else 0
        sx = stride[1] % grid.tile_w if grid.cols > 1 else 0
        return cls(grid.tile_h, grid.tile_w, sy, sx, every, order)

    def offset(self, index: int) -> tuple[int, int]:
        """Grid offset at denoising step ``index`` of the stage (0 = first refinement step)."""
        c = index // self.every
        return self._axis(c, self.stride_y, self.tile_h), self._axis(c, self.stride_x, self.tile_w)

    def _axis(self, c: int, stride: int, tile: int) -> int:
        if stride == 0:
            return 0
        if self.order == "walk":
            return (c * stride) % tile
        period = _period(stride, tile)
        return (spread_order(period)[c % period] * stride) % tile

    def cycle_length(self) -> tuple[int, int]:
        """Shifts after which each axis returns to offset 0."""
        return _period(self.stride_y, self.tile_h), _period(self.stride_x, self.tile_w)

    def to_dict(self) -> dict:
        return {
            "tile_h": self.tile_h,
            "tile_w": self.tile_w,
            "stride_y": self.stride_y,
            "stride_x": self.stride_x,
            "every": self.every,
            "order": self.order,
        }
