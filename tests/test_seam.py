"""The seam pass: the last refinement step again on a half-tile-shifted grid, blended in."""

from __future__ import annotations

import dask.config
import numpy as np
import pytest
from conftest import assert_renders_identical, local_client, tiny_spec
from hypothesis import given
from hypothesis import strategies as st

import supergen_dask as sd
from storage import RenderStore
from supergen_dask.geometry import TileGrid
from supergen_dask.plan import RenderPlan, plan_render
from supergen_dask.seam import border_distance, seam_shift, seam_weight


def _grid():
    return TileGrid(canvas_h=32, canvas_w=48, tile_h=16, tile_w=16, valid_h=30, valid_w=44)


def test_weight_takes_the_seam_pass_beside_the_last_grid_and_never_beside_its_own():
    g = _grid()
    last, seam = (3, 5), (11, 13)
    w = seam_weight(0, 0, g.canvas_h, g.canvas_w, g, last, seam)
    assert w.shape == (32, 48) and w.min() >= 0 and w.max() <= 1
    near_last_y = border_distance(0, 32, last[0], 16, 32, 2) < 1
    near_last_x = border_distance(0, 48, last[1], 16, 48, 3) < 1
    near_seam_y = border_distance(0, 32, seam[0], 16, 32, 2) < 1
    near_seam_x = border_distance(0, 48, seam[1], 16, 48, 3) < 1
    beside_last = near_last_y[:, None] | near_last_x[None, :]
    beside_seam = near_seam_y[:, None] | near_seam_x[None, :]
    assert beside_last.any() and beside_seam.any()
    assert np.all(w[beside_last & ~beside_seam] == 1)
    assert np.all(w[beside_seam & ~beside_last] == 0)
    # a window's weights are the same numbers as the canvas's at those cells (wrapping)
    part = seam_weight(27, 40, 16, 16, g, last, seam)
    ys, xs = np.arange(27, 43) % 32, np.arange(40, 56) % 48
    np.testing.assert_array_equal(part, w[np.ix_(ys, xs)])


@given(patch=st.integers(1, 4), patches=st.integers(1, 24), last=st.integers(0, 200))
def test_each_grids_borders_lie_inside_a_patch_of_the_others_windows(patch, patches, last):
    tile = patch * patches
    shift = seam_shift(tile, patch)
    assert 0 <= shift < tile and abs(shift - tile / 2) <= patch / 2  # about half a tile
    seam = (last + shift) % tile
    # where a border of one grid falls in the patches (counted from a window's corner) of the other
    at_last, at_seam = (last - seam) % tile % patch, (seam - last) % tile % patch
    if patch > 1:
        assert at_last and at_seam  # never on a patch boundary
    if patch % 2 == 0:
        assert at_last == at_seam == patch // 2  # in the middle


def test_seam_shift_refuses_a_tile_that_is_not_whole_patches():
    with pytest.raises(ValueError, match="multiple of the patch"):
        seam_shift(15, 2)


def test_one_tile_axis_has_no_borders():
    assert np.isinf(border_distance(0, 8, 0, 8, 8, 1)).all()


def test_plan_has_a_seam_pass_when_it_costs_at_most_max_extra():
    plan = plan_render(tiny_spec(num_inference_steps=8, refine_steps=7))
    s, rf = plan.seam, plan.refine
    assert s is not None and s.step == rf.last and s.last_offset == rf.offset(rf.last)
    p = plan.model.patch_spatial
    assert s.offset == tuple(
        (o + seam_shift(t, p)) % t
        for o, t in zip(rf.offset(rf.last), (rf.grid.tile_h, rf.grid.tile_w), strict=True)
    )
    assert plan.final is s and plan.n_tile_tasks() == 8 * 1 + 7 * 4 + 4
    assert RenderPlan.from_dict(plan.to_dict()) == plan
    assert [st.name for st in plan.layout().stages] == ["sketch", "refine", "seam"]
    # 1/4 of the refinement's tile calls is over the default 15%; off when disabled; none for one tile
    assert plan_render(tiny_spec(num_inference_steps=6, refine_steps=4)).seam is None
    with dask.config.set({"supergen.seam.enabled": False}):
        assert plan_render(tiny_spec(num_inference_steps=8, refine_steps=7)).seam is None
    assert plan_render(tiny_spec(height=64, width=64, num_inference_steps=8, refine_steps=7)).seam is None


SEAM_SPEC = tiny_spec(num_inference_steps=8, refine_steps=7)


def test_seam_pass_one_and_three_workers_bit_identical_and_resumes(tmp_path):
    with local_client(1) as c1:
        one = sd.render(SEAM_SPEC, output_dir=tmp_path / "one", client=c1, progress=False)
    assert one.plan.seam is not None
    store = RenderStore.open(str(one.store_path))
    assert store.done_mask("seam").all()
    final = store.read_canvas("seam", "latents", one.plan.seam.step)
    last = store.read_canvas("refine", "latents", one.plan.refine.last)
    assert np.isfinite(final).all() and not np.array_equal(final, last)  # the pass changed borders
    with local_client(3) as c3:
        sd.render(SEAM_SPEC, output_dir=tmp_path / "three", client=c3, progress=False)
    assert_renders_identical(tmp_path / "one", tmp_path / "three")

    # lose one seam window and everything after it: a resume redoes only that much, same bytes
    (tmp_path / "one" / "video.mp4").unlink()
    store.clear_done("seam", one.plan.seam.step, 1, 0)
    for reg in one.plan.decode_regions():
        store.clear_task_done(f"decode_{reg.row}_{reg.col}")
    with local_client(2) as c2:
        again = sd.resume(tmp_path / "one", client=c2, progress=False)
    seam_runs = [r for r in again.receipts if r.get("task") == "seam" and not r.get("skipped")]
    assert [r["name"] for r in seam_runs] == [f"seam/{one.plan.seam.step}/1/0"]
    assert not [r for r in again.receipts if r.get("task") == "denoise" and not r.get("skipped")]
    assert_renders_identical(tmp_path / "one", tmp_path / "three")


@pytest.mark.parametrize("enabled", [False, True])
def test_quality_record_scores_the_seam_pass_borders(tmp_path, client, enabled):
    with dask.config.set({"supergen.seam.enabled": enabled}):
        result = sd.render(SEAM_SPEC, output_dir=tmp_path / "r", client=client, progress=False)
    q = result.quality
    assert (q["seam_score_pass"] is not None) == enabled
