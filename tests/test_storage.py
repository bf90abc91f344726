"""The tile-addressed store: rolled chunks, wrapping reads, markers, blending of decoded regions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import (
    DecodeLayout,
    RenderExistsError,
    RenderLayout,
    RenderStore,
    StageLayout,
    create_render_store,
)
from supergen_dask.plan import decode_regions


def _layout(offsets=((0, 0), (3, 5), (7, 2)), canvas=(16, 24), tile=(8, 8), valid=(12, 20)):
    st_ = StageLayout(
        name="refine",
        frames=2,
        channels=3,
        canvas_h=canvas[0],
        canvas_w=canvas[1],
        tile_h=tile[0],
        tile_w=tile[1],
        valid_h=valid[0],
        valid_w=valid[1],
        steps=(4, 5, 6),
        timesteps=(900.0, 700.0, 500.0),
        offsets=offsets,
        state_slots=(("model_outputs", 2),),
    )
    dec = DecodeLayout(
        frames=5, scale=2, valid_h=valid[0], valid_w=valid[1], regions=decode_regions(*valid, 8, 8, 2)
    )
    return RenderLayout(stages=(st_,), decode=dec, embed_tokens=4, embed_dim=6, tasks=("prompt", "encode"))


def _write_canvas(store, step, canvas):
    """Write a full canvas as the tiles of ``step``'s shifted grid (what the tasks do)."""
    st_ = store.stage("refine")
    oy, ox = st_.offset_of(step)
    rolled = np.roll(canvas, (-oy, -ox), (-2, -1))
    for r in range(st_.rows):
        for c in range(st_.cols):
            tile = rolled[..., r * st_.tile_h : (r + 1) * st_.tile_h, c * st_.tile_w : (c + 1) * st_.tile_w]
            store.write_tile("refine", "latents", step, r, c, tile)


def test_tiles_are_chunks_and_reads_wrap(tmp_path):
    store = create_render_store(str(tmp_path / "s.zarr"), _layout(), {"spec": {}})
    rng = np.random.default_rng(0)
    canvases = {}
    for step in (4, 5, 6):
        canvases[step] = rng.standard_normal((2, 3, 16, 24)).astype(np.float32)
        _write_canvas(store, step, canvases[step])
        np.testing.assert_array_equal(store.read_canvas("refine", "latents", step), canvases[step])
    # a window that wraps both edges
    got = store.read_region("refine", "latents", 5, 13, 21, 8, 8)
    want = np.roll(canvases[5], (-13, -21), (-2, -1))[..., :8, :8]
    np.testing.assert_array_equal(got, want)
    # one tile write == one chunk file per step (no shared chunks between tiles)
    chunks = list((tmp_path / "s.zarr" / "refine" / "latents" / "c").rglob("*"))
    assert len([c for c in chunks if c.is_file()]) == 3 * 2 * 3


@settings(max_examples=40, deadline=None)
@given(y0=st.integers(-30, 60), x0=st.integers(-30, 60), h=st.integers(1, 16), w=st.integers(1, 24))
def test_read_region_matches_numpy_roll(tmp_path_factory, y0, x0, h, w):
    path = tmp_path_factory.mktemp("s") / "s.zarr"
    store = create_render_store(str(path), _layout(), {})
    canvas = np.arange(2 * 3 * 16 * 24, dtype=np.float32).reshape(2, 3, 16, 24)
    _write_canvas(store, 6, canvas)
    want = np.roll(canvas, (-y0, -x0), (-2, -1))[..., :h, :w]
    np.testing.assert_array_equal(store.read_region("refine", "latents", 6, y0, x0, h, w), want)


def test_markers_stats_and_refusals(tmp_path):
    url = str(tmp_path / "s.zarr")
    store = create_render_store(url, _layout(), {"spec": {"a": 1}})
    assert not store.done_mask("refine").any()
    store.mark_done("refine", 5, 1, 2, {"seconds": 1.5, "session": 1})
    assert store.is_done("refine", 5, 1, 2) and store.done_mask("refine").sum() == 1
    assert store.tile_stats("refine")["seconds"][1, 1, 2] == 1.5
    with pytest.raises(KeyError):
        store.mark_done("refine", 5, 0, 0, {"bogus": 1})
    with pytest.raises(KeyError, match="no step"):
        store.is_done("refine", 99, 0, 0)
    store.mark_task_done("prompt")
    assert store.tasks_done() == {"prompt": True, "encode": False}
    with pytest.raises(RenderExistsError):
        create_render_store(url, _layout(), {})
    assert RenderStore.open(url).attrs["spec"] == {"a": 1}  # untouched by the refused create
    with pytest.raises(FileNotFoundError):
        RenderStore.open(str(tmp_path / "missing.zarr"))


def test_decoded_regions_blend_to_the_frame(tmp_path):
    layout = _layout()
    store = create_render_store(str(tmp_path / "s.zarr"), layout, {})
    d = layout.decode
    H, W = d.valid_h * d.scale, d.valid_w * d.scale
    truth = np.random.default_rng(1).integers(0, 256, (d.frames, H, W, 3), dtype=np.uint8)
    for reg in d.regions:
        wy, wx, wh, ww = (v * d.scale for v in reg.window)
        store.write_region_pixels(reg, truth[:, wy : wy + wh, wx : wx + ww])
    # regions that agree on their overlaps blend back to exactly the frame
    np.testing.assert_array_equal(store.decoded_frames(), truth)
    np.testing.assert_array_equal(np.stack(list(store.iter_decoded(chunk=2))), truth)
    # where neighbours disagree the blend is a smooth mix, bounded by the two decodes
    reg = d.regions[0]
    wy, wx, wh, ww = (v * d.scale for v in reg.window)
    store.write_region_pixels(reg, np.zeros((d.frames, wh, ww, 3), np.uint8))
    out = store.decoded_frames()
    cy, cx, ch, cw = (v * d.scale for v in reg.core)
    assert np.all(out[:, : cy + ch - 2 * d.scale, : cx + cw - 2 * d.scale] == 0)
    assert np.all(out <= truth)


def test_prune_keeps_the_last_step_and_refuses_unfinished_renders(tmp_path):
    url = str(tmp_path / "s.zarr")
    store = create_render_store(url, _layout(), {})
    rng = np.random.default_rng(1)
    canvases = {step: rng.standard_normal((2, 3, 16, 24)).astype(np.float32) for step in (4, 5, 6)}
    st_ = store.stage("refine")
    for step, canvas in canvases.items():
        _write_canvas(store, step, canvas)
        for r in range(st_.rows):
            for c in range(st_.cols):
                store.write_tile("refine", "state_model_outputs", step, r, c, np.ones((2, 2, 3, 8, 8)))
                if step != 6 or (r, c) != (0, 0):
                    store.mark_done("refine", step, r, c, {})
    store.mark_task_done("prompt")
    store.mark_task_done("encode")
    with pytest.raises(RuntimeError, match="finished"):  # one tile of the last step is missing
        store.prune_intermediate()
    assert np.isfinite(store.read_canvas("refine", "latents", 4)).all()
    store.mark_done("refine", 6, 0, 0, {})
    assert store.is_finished()
    before = sum(f.stat().st_size for f in (tmp_path / "s.zarr").rglob("*") if f.is_file())
    assert store.prune_intermediate() == 2 + 1
    after = sum(f.stat().st_size for f in (tmp_path / "s.zarr").rglob("*") if f.is_file())
    assert after < before / 2
    reopened = RenderStore.open(url)
    assert reopened.attrs["pruned"] is True
    np.testing.assert_array_equal(reopened.read_canvas("refine", "latents", 6), canvases[6])
    assert np.isnan(reopened.read_canvas("refine", "latents", 4)).all()
    assert np.isnan(reopened.read_canvas("refine", "latents", 5)).all()
    assert np.isnan(reopened.array("refine/state_model_outputs")[...]).all()
    assert reopened.done_mask("refine").all()  # the record of the work stays


def test_store_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    url = str(tmp_path / "s.zarr")

    def killed(self):
        raise KeyboardInterrupt  # a kill between the arrays and the identity attributes

    with monkeypatch.context() as m:
        m.setattr(RenderLayout, "to_dict", killed)
        with pytest.raises(KeyboardInterrupt):
            create_render_store(url, _layout(), {"spec": {}})
    assert not (tmp_path / "s.zarr").exists()  # nothing half-made where the store belongs
    with pytest.raises(FileNotFoundError):
        RenderStore.open(url)
    store = create_render_store(url, _layout(), {"spec": {"a": 1}})
    assert RenderStore.open(url).attrs["spec"] == {"a": 1} and store.instance
    with pytest.raises(RenderExistsError):
        create_render_store(url, _layout(), {"spec": {}})


def _finished_step(store, step, canvas):
    _write_canvas(store, step, canvas)
    st_ = store.stage("refine")
    for r in range(st_.rows):
        for c in range(st_.cols):
            store.mark_done("refine", step, r, c, {})


def test_readers_check_their_own_chunk_and_never_use_a_missing_one(tmp_path):
    from storage import ChunkCorruptError

    url = str(tmp_path / "s.zarr")
    store = create_render_store(url, _layout(), {"spec": {}})
    canvas = np.random.default_rng(1).standard_normal((2, 3, 16, 24)).astype(np.float32)
    _finished_step(store, 5, canvas)
    chunk = tmp_path / "s.zarr" / "refine" / "latents" / "c" / "1" / "0" / "0"
    window = (5, 4, 7, 8, 8)  # covers chunks (0, 0), (0, 1), (1, 0), (1, 1) of step 5 (offset (3, 5))
    np.testing.assert_array_equal(
        store.read_region("refine", "latents", *window, verify=(0, 0)), canvas[..., 4:12, 7:15]
    )
    raw = (chunk / "0" / "1").read_bytes()
    (chunk / "0" / "1").write_bytes(raw[:100] + bytes(64) + raw[164:])
    reader = RenderStore.open(url)
    with pytest.raises(ChunkCorruptError, match=r"step 5 tile \(0, 1\): checksum"):
        reader.read_region("refine", "latents", *window, verify=(0, 1))  # its own chunk: checked
    with pytest.raises(ChunkCorruptError, match=r"tile \(0, 1\)"):
        reader.read_region("refine", "latents", *window)  # "all"
    reader.read_region(
        "refine", "latents", *window, verify=(0, 0)
    )  # a neighbour's chunk: its reader checks it
    (chunk / "1" / "1").unlink()
    with pytest.raises(ChunkCorruptError, match="missing"):
        reader.read_region("refine", "latents", *window, verify=(0, 0))  # but never uses a missing one


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 48).map(lambda v: v * 16),
    st.integers(1, 48).map(lambda v: v * 16),
    st.integers(1, 20),
    st.integers(1, 16),
    st.integers(1, 3),
    st.sampled_from(["balanced", "native", "fit"]),
)
def test_every_chunk_is_read_by_the_same_tile_of_the_next_step(
    height, width, steps, divisions, every, policy
):
    """The rule that lets each tile task check only its own index's chunk: tile (r, c) of step s
    always overlaps chunk (r, c) of step s - 1, so every finished chunk is checked by a reader."""
    from conftest import tiny_spec

    from supergen_dask import ShiftSettings, plan_render
    from supergen_dask.geometry import TileKey

    spec = tiny_spec(
        height=height,
        width=width,
        num_inference_steps=steps,
        refine_steps=steps,
        tile_policy=policy,
        shift=ShiftSettings(divisions=divisions, every=every),
    )
    stage = plan_render(spec).refine
    for step in stage.steps[1:]:
        for r, c in stage.grid.tiles():
            assert TileKey("refine", step - 1, r, c) in stage.dependencies(TileKey("refine", step, r, c))
