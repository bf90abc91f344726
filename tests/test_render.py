"""End-to-end renders on a CPU cluster with the tiny random Wan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_renders_identical, local_client, tiny_spec

import supergen_dask as sd
from storage import RenderStore, probe_video, read_video
from supergen_dask import worker_models
from supergen_dask.noise import position_noise
from supergen_dask.plan import plan_render
from supergen_dask.stepping import renoise


def _reference_stage(plan, store: RenderStore, stage_name: str) -> list[torch.Tensor]:
    """The method written the plain way: every step, predict each tile of the (shifted) grid,
    fuse the predictions on the full canvas, take ONE full-canvas scheduler step."""
    st = plan.stage(stage_name)
    g = st.grid
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    neg, pos = (torch.from_numpy(a) for a in store.read_prompt_embeds())
    x = torch.from_numpy(store.read_canvas(stage_name, "start", None)).permute(1, 0, 2, 3)[None]
    sched = plan.scheduler.build()
    sched.set_begin_index(st.first)
    if stage_name == "refine" and plan.anchored:
        clean = torch.from_numpy(store.read_canvas("refine", "anchor", None)).permute(1, 0, 2, 3)[None]
        eps = position_noise(
            plan.spec.seed, "refine", st.latent_frames, st.channels, 0, 0, g.canvas_h, g.canvas_w
        )
        eps = eps.permute(1, 0, 2, 3)[None]
    outs = []
    for step in st.steps:
        t = sched.timesteps[step]
        c = plan.anchor_weight(step) if stage_name == "refine" else 0.0
        if c > 0:  # sketch anchoring, on the whole canvas at once
            x = (1 - c) * x + c * renoise(plan.scheduler, step, clean, eps)
        model_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        fused = torch.full_like(x, float("nan"))
        oy, ox = st.offset(step)
        rolled_in = torch.roll(model_in, (-oy, -ox), (-2, -1))
        rolled_pred = torch.empty_like(x)
        for r, c in g.tiles():
            sl = (..., slice(r * g.tile_h, (r + 1) * g.tile_h), slice(c * g.tile_w, (c + 1) * g.tile_w))
            tile = rolled_in[sl]
            if st.split_guidance:  # the plan runs each guidance branch as its own batch of one
                u, cnd = (backend.predict(tile, t.expand(1), e[None]) for e in (neg, pos))
            else:
                out = backend.predict(torch.cat([tile, tile]), t.expand(2), torch.stack([neg, pos]))
                u, cnd = out.chunk(2)
            rolled_pred[sl] = u + plan.spec.guidance_scale * (cnd - u)
        fused = torch.roll(rolled_pred, (oy, ox), (-2, -1))
        x = sched.step(fused, t, x, return_dict=False)[0]
        outs.append(x.clone())
    return outs


@pytest.mark.parametrize("scheduler, anchor", [("unipc", 0.0), ("flow-euler", 0.0), ("unipc", 0.6)])
def test_tiles_equal_full_canvas_reference(tmp_path, client, scheduler, anchor):
    # 96x160 px -> 12x20 latent cells on a padded 12x24 canvas of 6x8 tiles: shifting wraps tiles
    # around both edges, so the reference exercises torus wrap, padding and the shifted reads.
    spec = tiny_spec(
        height=96,
        width=160,
        scheduler=scheduler,
        num_inference_steps=6,
        refine_steps=4,
        anchor=sd.AnchorSettings(strength=anchor),
        # the reference keeps float32 and every step: compare what was computed, exactly
        output=sd.OutputSettings(store_dtype="float32", keep_every=1, keep_history=True),
    )
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    plan = result.plan
    assert plan.refine.grid.n_tiles == 6 and plan.refine.shift.stride_y > 0
    store = RenderStore.open(str(result.store_path), mode="r")
    for stage in ("sketch", "refine"):
        ref = _reference_stage(plan, store, stage)
        for step, expected in zip(plan.stage(stage).steps, ref, strict=True):
            got = torch.from_numpy(store.read_canvas(stage, "latents", step)).permute(1, 0, 2, 3)[None]
            assert torch.equal(got, expected), f"{stage} step {step} differs from the full-canvas reference"


def test_one_and_three_workers_bit_identical(tmp_path):
    spec = tiny_spec(height=96, width=160)
    with local_client(1) as c1:
        sd.render(spec, output_dir=tmp_path / "one", client=c1, progress=False)
    with local_client(3) as c3:
        sd.render(spec, output_dir=tmp_path / "three", client=c3, progress=False)
    assert_renders_identical(tmp_path / "one", tmp_path / "three")


def test_video_and_xarray_view(tmp_path, client):
    spec = tiny_spec(height=96, width=160)
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    plan = result.plan
    info = probe_video(result.video_path)
    assert (info.width, info.height, info.frames) == (160, 96, 9)
    assert info.pix_fmt == "yuv420p"

    ds = sd.open_render(str(result.store_path))
    assert ds.latents.dims == ("step", "frame", "channel", "y", "x")
    assert ds.latents.shape == (4, 3, 16, 12, 20)
    assert list(ds.step.values) == list(plan.refine.steps)
    assert np.allclose(ds.timestep.values, plan.refine.timesteps)
    assert bool(ds.done.all())
    store = RenderStore.open(str(result.store_path), mode="r")
    # retention (default): the kept steps read as stored, the freed ones as NaN
    kept = [s for s in plan.refine.steps if (s + 1) % plan.spec.output.keep_every == 0]
    assert ds.attrs["steps_kept"] == sorted({*kept, plan.refine.last})
    assert list(ds.kept.values) == [s in ds.attrs["steps_kept"] for s in plan.refine.steps]
    for step in plan.refine.steps:
        if step in ds.attrs["steps_kept"]:
            full = store.read_canvas("refine", "latents", step)
            np.testing.assert_array_equal(ds.latents.sel(step=step).values, full[..., :12, :20])
        else:
            assert np.isnan(ds.latents.sel(step=step).values).all()
    # the uncropped view is the padded canvas exactly as the tasks wrote it
    raw = sd.open_render(str(result.store_path), crop=False)
    assert raw.latents.shape[-2:] == (plan.refine.grid.canvas_h, plan.refine.grid.canvas_w)
    np.testing.assert_array_equal(raw.start.values, store.read_canvas("refine", "start", None))
    # tile origin coordinates follow the shift schedule
    for i, step in enumerate(plan.refine.steps):
        oy, ox = plan.refine.offset(step)
        assert ds.tile_y0.values[i, 1] == (plan.refine.grid.tile_h + oy) % plan.refine.grid.canvas_h
        assert ds.tile_x0.values[i, 2] == (2 * plan.refine.grid.tile_w + ox) % plan.refine.grid.canvas_w
    sk = sd.open_render(str(result.store_path), stage="sketch")
    assert list(sk.step.values) == list(range(6))
    assert json.loads(ds.attrs["spec"])["prompt"] == spec.prompt
    # lazily opened while inspecting: nothing computed until asked
    assert hasattr(ds.latents.data, "dask")


def test_lossless_video_matches_decoded_pixels(tmp_path, client):
    spec = tiny_spec(output=sd.OutputSettings(codec="lossless"))
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    frames = read_video(result.video_path)
    store = RenderStore.open(str(result.store_path), mode="r")
    np.testing.assert_array_equal(frames, store.decoded_frames())


@pytest.fixture(scope="module")
def default_render(tmp_path_factory, client):
    """``tiny_spec()`` rendered once; tests that change the directory work on a copy."""
    return sd.render(
        tiny_spec(), output_dir=tmp_path_factory.mktemp("default") / "r", client=client, progress=False
    )


KEEP_ALL = sd.OutputSettings(keep_every=1, keep_history=True)


@pytest.fixture(scope="module")
def keep_all_render(tmp_path_factory, client):
    """``tiny_spec()`` keeping every step and the scheduler history, rendered once."""
    spec = tiny_spec(output=KEEP_ALL)
    return sd.render(spec, output_dir=tmp_path_factory.mktemp("keep") / "r", client=client, progress=False)


def _copy(render_dir, to):
    import shutil

    return shutil.copytree(render_dir, to)


def test_rerun_of_same_spec_recomputes_nothing(tmp_path, client, default_render):
    spec = tiny_spec()
    first = default_render
    assert first.summary()["tile_tasks_run"] == first.plan.n_tile_tasks()
    _copy(first.render_dir, tmp_path / "r")
    again = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    assert again.submitted == 0 and again.session == 2
    # a lost video is re-encoded from the stored pixels, nothing else reruns
    again.video_path.unlink()
    third = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    segments = len(third.plan.encode_segments())
    assert [r["task"] for r in third.receipts] == ["encode"] * (segments + 1)
    assert third.video_path.exists()


def test_sketch_with_split_guidance_resumes_to_the_same_bytes(tmp_path, client, keep_all_render):
    """The sketch's guidance branches are separate tasks and each step is finished by the next
    step's first branch: a render stopped with later sketch steps unfinished (their branch
    outputs possibly written) resumes to the bytes of an uninterrupted one."""
    # every step kept: the stop is simulated by clearing markers (a real stop with retention:
    # test_retention.py)
    full = keep_all_render
    assert full.plan.sketch.split_guidance
    part = tmp_path / "part"
    _copy(full.render_dir, part)
    store = RenderStore.open(str(part / "render.zarr"))
    store.array("sketch/done")[3:] = 0
    store.array("refine/done")[:] = 0
    for task in store.layout.tasks:
        if task.startswith(("upscale", "start", "decode", "encode")):
            store.array("task_done")[store.task_index(task)] = 0
    (part / "video.mp4").unlink()
    resumed = sd.resume(part, client=client, progress=False)
    assert resumed.summary()["tile_tasks_run"] == full.plan.n_tile_tasks() - 3
    assert_renders_identical(full.render_dir, part)


def test_different_spec_in_same_dir_is_refused(tmp_path, client, default_render):
    _copy(default_render.render_dir, tmp_path / "r")
    before = (tmp_path / "r" / "video.mp4").read_bytes()
    with pytest.raises(sd.RenderExistsError, match="different render"):
        sd.render(tiny_spec(seed=8), output_dir=tmp_path / "r", client=client, progress=False)
    assert (tmp_path / "r" / "video.mp4").read_bytes() == before
    sd.render(tiny_spec(seed=8), output_dir=tmp_path / "r", client=client, progress=False, overwrite=True)
    assert RenderStore.open(str(tmp_path / "r" / "render.zarr")).attrs["spec"]["seed"] == 8


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(height=100), "height"),
        (dict(width=0), "width"),
        (dict(num_frames=10), "num_frames"),
        (dict(refine_steps=7), "refine_steps"),
        (dict(refine_steps=0), "refine_steps"),
        (dict(model="no-such-model"), "model"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(prompt=""), "prompt"),
        (dict(scheduler="ddpm"), "scheduler"),
        (dict(dtype="int8"), "dtype"),
        (dict(tile_policy="overlap"), "tile_policy"),
        (dict(image="cat.png"), "image"),
        (dict(seed=-1), "seed"),
        (dict(shift=sd.ShiftSettings(divisions=0)), "shift.divisions"),
        (dict(output=sd.OutputSettings(codec="prores")), "output.codec"),
        (dict(anchor=sd.AnchorSettings(strength=1.5)), "anchor.strength"),
        (
            dict(anchor=sd.AnchorSettings(strength=0.5), refine_steps=6),
            "anchor.strength",
        ),  # no sketch to anchor to
    ],
)
def test_bad_specs_fail_before_writing(tmp_path, overrides, field):
    out = tmp_path / "never"
    with pytest.raises(sd.SpecError) as info:
        sd.render(tiny_spec(**overrides), output_dir=out, progress=False)
    assert info.value.field == field
    assert not out.exists()


def test_stats_and_sessions_are_recorded(default_render):
    result = default_render
    store = RenderStore.open(str(result.store_path), mode="r")
    stats = store.tile_stats("refine")
    assert np.all(stats["session"] == 1)
    assert np.all(stats["forward_seconds"] > 0) and np.all(stats["seconds"] >= stats["forward_seconds"])
    sessions = store.attrs["sessions"]
    assert sessions[-1]["status"] == "finished" and sessions[-1]["workers"]
    assert set(store.attrs["versions"]) >= {"torch", "diffusers", "dask", "zarr", "xarray", "av"}


def test_plan_is_pure_and_round_trips():
    plan = plan_render(tiny_spec(height=96, width=160))
    again = sd.RenderPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    assert again.layout() == plan.layout()


def test_segment_length_follows_the_frame_size_never_the_machine(monkeypatch):
    import dask

    from supergen_dask.plan import segment_frames
    from supergen_dask.spec import SpecError

    sizes = [(480, 832), (1080, 1920), (1440, 2560), (1800, 3200), (2160, 3840), (4320, 7680)]
    assert [segment_frames(h, w) for h, w in sizes] == [16, 16, 16, 11, 8, 8]
    # 81 frames of 4K: 11 segments of at most 8 frames (6 of 14 with 16-frame segments)
    plan = plan_render(tiny_spec(height=2160, width=3840, num_frames=81))
    assert plan.encode_segment_frames == 8 and len(plan.encode_segments()) == 11
    assert max(b - a for a, b in plan.encode_segments()) == 8
    monkeypatch.setattr("os.cpu_count", lambda: 256)
    assert plan_render(tiny_spec(height=2160, width=3840, num_frames=81)) == plan
    with dask.config.set({"supergen.encode.segment-frames": 5}):
        assert segment_frames(2160, 3840) == 5
    for bad in (0, 2.5, "many", True):
        with dask.config.set({"supergen.encode.segment-frames": bad}):
            with pytest.raises(SpecError, match="encode.segment-frames"):
                segment_frames(2160, 3840)


def test_quality_is_measured_and_stored(default_render):
    result = default_render
    q = result.quality
    assert q is not None and q["frames"] == 9
    assert np.isfinite(q["seam_score_last"]) and np.isfinite(q["detail_gain"])
    # the prompt names a toy colour, but tiny-random-wan declares no prompt grammar: nothing counted
    assert "object_counts" not in q and "exactly_one" not in q
    store = RenderStore.open(str(result.store_path), mode="r")
    assert store.attrs["quality"] == q
    # the detail reference was measured during the refinement, to the same values as measuring
    # everything after the last decode
    from supergen_dask.quality import detail_reference, render_quality

    (reference,) = [r for r in result.receipts if r["task"] == "reference"]
    assert reference["detail_reference"] == detail_reference(result.plan, store)
    assert render_quality(result.plan, store) == q


def test_anchoring_changes_the_refinement(tmp_path, client, keep_all_render):
    base = keep_all_render  # every step kept: the first refinement step is compared too
    anchored = sd.render(
        tiny_spec(anchor=sd.AnchorSettings(strength=0.8), output=KEEP_ALL),
        output_dir=tmp_path / "b",
        client=client,
        progress=False,
    )
    a = RenderStore.open(str(base.store_path), mode="r")
    b = RenderStore.open(str(anchored.store_path), mode="r")
    first = base.plan.refine.first
    # the first step mixes the start with itself (the anchor at the start's noise level): no change
    np.testing.assert_array_equal(
        a.read_canvas("refine", "latents", first), b.read_canvas("refine", "latents", first)
    )
    last = base.plan.refine.last
    assert not np.array_equal(
        a.read_canvas("refine", "latents", last), b.read_canvas("refine", "latents", last)
    )


def test_quality_of_long_videos_uses_a_middle_window(tmp_path, client):
    import dask

    with dask.config.set({"supergen.quality.max-frames": 5}):
        result = sd.render(tiny_spec(), output_dir=tmp_path / "r", client=client, progress=False)
    assert result.quality["frames"] == 5
