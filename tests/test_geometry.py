"""Tile geometry on the torus: property tests over arbitrary canvases, tiles and shifts."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supergen_dask.geometry import SHIFT_ORDERS, ShiftSchedule, TileGrid, axis_cover, spread_order
from supergen_dask.plan import decode_regions

sizes = st.integers(min_value=1, max_value=300)
natives = st.integers(min_value=2, max_value=120)


def coverage(grid: TileGrid, offset: tuple[int, int]) -> np.ndarray:
    """How many tiles of the shifted grid cover each canvas cell."""
    count = np.zeros((grid.canvas_h, grid.canvas_w), dtype=int)
    for r, c in grid.tiles():
        y0, x0 = grid.origin(r, c, offset)
        ys = (y0 + np.arange(grid.tile_h)) % grid.canvas_h
        xs = (x0 + np.arange(grid.tile_w)) % grid.canvas_w
        count[np.ix_(ys, xs)] += 1
    return count


@settings(max_examples=200, deadline=None)
@given(
    h=sizes,
    w=sizes,
    nh=natives,
    nw=natives,
    patch=st.sampled_from([1, 2]),
    policy=st.sampled_from(["balanced", "native", "fit"]),
)
def test_grid_covers_canvas_and_tiles_stay_native(h, w, nh, nw, patch, policy):
    g = TileGrid.for_canvas(h, w, nh, nw, multiple=patch, policy=policy)
    assert g.canvas_h >= h and g.canvas_w >= w
    assert g.canvas_h % g.tile_h == 0 and g.canvas_w % g.tile_w == 0
    assert g.tile_h % patch == 0 and g.tile_w % patch == 0
    # never more tokens than the model's native tile (allowing the patch rounding of tiny natives)
    limit = max(nh, patch) * max(nw, patch)
    assert g.tile_h * g.tile_w <= limit + patch * (nh + nw + patch)
    # padding is less than one tile per axis
    assert g.canvas_h - h < g.tile_h and g.canvas_w - w < g.tile_w


@settings(max_examples=150, deadline=None)
@given(
    h=st.integers(1, 120),
    w=st.integers(1, 120),
    nh=st.integers(2, 40),
    nw=st.integers(2, 40),
    divisions=st.integers(1, 20),
    every=st.integers(1, 3),
    steps=st.integers(1, 40),
    order=st.sampled_from(SHIFT_ORDERS),
)
def test_every_step_partitions_the_canvas_exactly_once(h, w, nh, nw, divisions, every, steps, order):
    g = TileGrid.for_canvas(h, w, nh, nw, multiple=2)
    shift = ShiftSchedule.for_grid(g, divisions=divisions, every=every, order=order)
    for i in range(steps):
        assert np.all(coverage(g, shift.offset(i)) == 1)


@settings(max_examples=200, deadline=None)
@given(
    tile_h=st.integers(2, 200),
    tile_w=st.integers(2, 200),
    sy=st.integers(1, 50),
    sx=st.integers(1, 50),
    order=st.sampled_from(SHIFT_ORDERS),
)
def test_each_axis_visits_every_offset_of_its_cycle(tile_h, tile_w, sy, sx, order):
    s = ShiftSchedule(tile_h, tile_w, sy % tile_h, sx % tile_w, order=order)
    cy, cx = s.cycle_length()
    ys = {s.offset(i)[0] for i in range(cy)}
    xs = {s.offset(i)[1] for i in range(cx)}
    gy = math.gcd(s.stride_y, tile_h) if s.stride_y else tile_h
    gx = math.gcd(s.stride_x, tile_w) if s.stride_x else tile_w
    assert ys == set(range(0, tile_h, gy))
    assert xs == set(range(0, tile_w, gx))
    assert s.offset(cy)[0] == 0 and s.offset(cx)[1] == 0


@settings(max_examples=200, deadline=None)
@given(period=st.integers(1, 300))
def test_spread_order_is_a_permutation_that_starts_at_zero(period):
    order = spread_order(period)
    assert sorted(order) == list(range(period)) and order[0] == 0


@pytest.mark.parametrize("period", [16, 18, 20, 26, 52])  # the periods of 16 divisions of real tiles
def test_spread_order_keeps_consecutive_offsets_apart(period):
    """Within a cycle, consecutive offsets are at least 3 apart on the circle (the walk: one), and
    most often half the cycle."""
    order = spread_order(period)
    gaps = [min((b - a) % period, (a - b) % period) for a, b in itertools.pairwise(order)]
    assert min(gaps) >= 3
    assert statistics.median(gaps) == period / 2


def test_spread_order_of_sixteen():
    assert spread_order(16) == (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)


def test_the_last_steps_borders_are_apart_with_spread_and_together_with_walk():
    """The toy at 16x: 16-cell tiles, stride 1, 18 refinement steps. The walk puts the last three
    steps' borders within two cells; spread puts each of the last step's neighbours 7-8 cells
    from it."""
    g = TileGrid(64, 64, 16, 16, 64, 64)
    last3 = {o: [ShiftSchedule.for_grid(g, order=o).offset(i)[0] for i in (15, 16, 17)] for o in SHIFT_ORDERS}
    assert last3["walk"] == [15, 0, 1]
    assert last3["spread"] == [15, 0, 8]


def test_a_stored_schedule_without_an_order_walks():
    """Plans stored before the order existed resume with the offsets they began with."""
    g = TileGrid(64, 64, 16, 16, 64, 64)
    d = ShiftSchedule.for_grid(g, order="spread").to_dict()
    assert d["order"] == "spread" and ShiftSchedule(**d) == ShiftSchedule.for_grid(g, order="spread")
    del d["order"]
    assert [ShiftSchedule(**d).offset(i) for i in range(16)] == [(i, i) for i in range(16)]
    with pytest.raises(ValueError, match="shift order"):
        ShiftSchedule(16, 16, 1, 1, order="random")


def test_supergen_default_visits_offsets_a_shared_modulus_misses():
    # SuperGen's 90x160 latent tile with loop_step 16: strides 5 and 10. A shared modulus of 16
    # never reaches vertical offsets 80 and 85; per-axis cycles do.
    g = TileGrid(180, 320, 90, 160, 180, 320)
    s = ShiftSchedule.for_grid(g, divisions=16)
    assert (s.stride_y, s.stride_x) == (5, 10)
    visited = {s.offset(i)[0] for i in range(s.cycle_length()[0])}
    assert {80, 85} <= visited
    shared = {(i % 16) * 5 for i in range(100)}
    assert 80 not in shared


@pytest.mark.parametrize(
    "px, native, tiles",
    [
        ((1080, 1920), (480, 832), (3, 3)),  # 1080p
        ((1440, 2560), (480, 832), (3, 4)),  # 2K
        ((2160, 3840), (480, 832), (5, 5)),  # 4K
        ((4320, 7680), (480, 832), (9, 10)),  # 8K
        ((1920, 1080), (480, 832), (3, 3)),  # portrait 1080p: portrait tiles
        ((720, 1280), (720, 1280), (1, 1)),  # native
    ],
)
def test_common_outputs_get_a_grid(px, native, tiles):
    f = 8
    g = TileGrid.for_canvas(px[0] // f, px[1] // f, native[0] // f, native[1] // f, multiple=2)
    assert (g.rows, g.cols) == tiles
    assert (g.valid_h, g.valid_w) == (px[0] // f, px[1] // f)


@settings(max_examples=300, deadline=None)
@given(
    h=st.integers(1, 600),
    w=st.integers(1, 600),
    nh=st.integers(2, 120),
    nw=st.integers(2, 120),
    patch=st.sampled_from([1, 2]),
)
def test_balanced_tiles_are_between_three_quarters_and_all_of_native(h, w, nh, nw, patch):
    g = TileGrid.for_canvas(h, w, nh, nw, multiple=patch)  # the default policy
    native = TileGrid.for_canvas(h, w, nh, nw, multiple=patch, policy="native")
    assert (g.rows, g.cols) == (native.rows, native.cols)  # as few tiles as native tiles take
    # tiles take the canvas's orientation (portrait tiles for portrait canvases)
    th, tw = (nw, nh) if (h > w and nh < nw) or (h < w and nh > nw) else (nh, nw)
    for tile, n, valid, nat in ((g.tile_h, g.rows, h, th), (g.tile_w, g.cols, w, tw)):
        nat = max(patch, nat - nat % patch)
        assert tile <= nat and tile % patch == 0
        if n > 1:
            assert 4 * tile >= 3 * nat
        else:
            assert tile == -(-valid // patch) * patch
    assert g.padding_waste <= native.padding_waste + 1e-12


@pytest.mark.parametrize("height, width", [(1080, 1920), (1440, 2560), (2160, 3840), (1920, 1080)])
def test_default_plan_wastes_at_most_five_percent_on_padding(height, width):
    """Issue 8: the default tile grid of the 1.3B shape at the sizes people ask for."""
    import dask.config

    import supergen_dask as sd

    spec = sd.RenderSpec(
        prompt="x", model="random-wan2.1-1.3b-shape", height=height, width=width, num_frames=81
    )
    with dask.config.set({"supergen.limits.enabled": False}):
        plan = sd.plan_render(spec)
    g = plan.refine.grid
    info = plan.model
    nh, nw = info.native_latent_hw
    if height > width:
        nh, nw = nw, nh
    assert 0 <= g.padding_waste <= 0.05, (g, g.padding_waste)
    assert 0.75 * nh <= g.tile_h <= nh and 0.75 * nw <= g.tile_w <= nw
    assert f"{g.padding_waste:+.1%} compute on padding" in plan.summary()
    with dask.config.set({"supergen.limits.enabled": False}):
        native = sd.plan_render(spec.replace(tile_policy="native")).refine.grid
    assert native.padding_waste > 0.05  # what the default used to waste


def test_fit_policy_has_no_padding_for_4k():
    g = TileGrid.for_canvas(270, 480, 60, 104, multiple=2, policy="fit")
    assert (g.canvas_h, g.canvas_w) == (270, 480)
    assert g.tile_h <= 60 and g.tile_w <= 104


def test_single_tile_axis_is_never_shifted():
    g = TileGrid.for_canvas(60, 300, 60, 104, multiple=2)
    assert g.rows == 1
    s = ShiftSchedule.for_grid(g)
    assert all(s.offset(i)[0] == 0 for i in range(50))
    assert s.stride_x > 0


@settings(max_examples=200, deadline=None)
@given(size=st.integers(2, 200), data=st.data())
def test_axis_cover_matches_brute_force(size, data):
    tile = data.draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
    offset = data.draw(st.integers(0, size - 1))
    start = data.draw(st.integers(-size, 2 * size))
    length = data.draw(st.integers(1, size))
    expected = []
    for k in range(length):
        idx = ((start + k - offset) % size) // tile
        if idx not in expected:
            expected.append(idx)
    assert axis_cover(start, length, size, tile, offset) == expected


@settings(max_examples=100, deadline=None)
@given(
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    ch=st.integers(1, 30),
    cw=st.integers(1, 30),
    m=st.integers(0, 6),
)
def test_decode_cores_partition_the_valid_area(h, w, ch, cw, m):
    count = np.zeros((h, w), dtype=int)
    for reg in decode_regions(h, w, ch, cw, m):
        y, x, rh, rw = reg.core
        wy, wx, wh, ww = reg.window
        count[y : y + rh, x : x + rw] += 1
        assert wy <= y and wx <= x and wy + wh >= y + rh and wx + ww >= x + rw
        assert 0 <= wy and 0 <= wx and wy + wh <= h and wx + ww <= w
    assert np.all(count == 1)


@pytest.mark.parametrize("flag", [[], ["--shift-order", "spread"]])
def test_shift_order_from_the_command_line_to_the_plan(flag):
    """``walk``, the published schedule, is the default; ``--shift-order spread`` reorders it. The
    plan summary names the order."""
    import supergen_dask as sd
    from supergen_dask.cli import build_parser, spec_from_args

    args = build_parser().parse_args(["render", "--prompt", "x", "--height", "256", "--width", "256", *flag])
    spec = spec_from_args(args)
    plan = sd.plan_render(spec)
    order = flag[-1] if flag else "walk"
    assert spec.shift.order == plan.refine.shift.order == order
    assert f"{order} order" in plan.summary()
    expected = ShiftSchedule.for_grid(plan.refine.grid, order=order)
    assert plan.refine.offsets == tuple(expected.offset(i) for i in range(len(plan.refine.steps)))
    assert plan.refine.offsets[0] == (0, 0)
