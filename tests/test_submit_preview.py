"""Notebook submission handles, the sketch clip written after stage 1, and `supergen preview`."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_spec
from PIL import Image

import supergen_dask as sd
from storage import RenderStore, probe_video, read_video
from supergen_dask.preview import contact_sheet, stored_steps
from supergen_dask.submit import wait_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def handles(tmp_path_factory, request):
    client = request.getfixturevalue("client")
    root = tmp_path_factory.mktemp("submit")
    specs = [
        tiny_spec(prompt="a red circle moving right", num_inference_steps=5, refine_steps=3),
        tiny_spec(prompt="a green square moving left", num_inference_steps=5, refine_steps=3, seed=2),
        tiny_spec(prompt="a red circle moving right", num_inference_steps=5, refine_steps=3),  # same as 0
        tiny_spec(prompt="too loud", num_inference_steps=5, refine_steps=3, guidance_scale=1e30),
    ]
    hs = sd.submit(specs, client, root)
    first = [h.status for h in hs]
    assert wait_all(hs, timeout=600)
    return hs, first


def test_submit_returns_at_once_and_handles_follow_each_render(handles):
    hs, first = handles
    assert first[0] == "running"  # submit returned before the renders ran
    assert hs[0] is hs[2]  # the same spec twice is one render
    ok, loud = hs[:2], hs[3]
    for h in ok:
        assert h.status == "finished" and not h.errors
        assert h.video is not None and probe_video(h.video).frames == h.plan.spec.num_frames
        done, total = h.progress()
        assert done == total > 0
        s = h.stats
        assert s["refine_tiles_done"][0] == s["refine_tiles_done"][1]
        assert {"sketch", "refine", "encode"} <= set(s["stages"])
        ds = h.dataset()
        assert ds.latents.dims == ("step", "frame", "channel", "y", "x") and bool(ds.done.all())
    assert loud.status == "failed" and loud.video is None
    assert len(loud.errors) == 1 and any(w in loud.errors[0] for w in ("NaN", "inf", "non-finite")), (
        loud.errors
    )
    with pytest.raises(sd.RenderError):
        loud.result()


def test_sketch_clip_shows_the_stored_sketch(handles):
    h = handles[0][0]
    clip = h.render_dir / "sketch.mp4"
    info = probe_video(clip)
    sketch = h.plan.sketch
    assert (info.height, info.width) == h.plan.sketch_pixel_size and info.frames == h.plan.spec.num_frames
    assert sketch is not None
    # the clip shows the stored sketch pixels (H.264 loses a little)
    pixels = RenderStore.open(str(h.store_path), mode="r").read_sketch_pixels()
    assert np.abs(read_video(clip).astype(int) - pixels.astype(int)).mean() < 8


class _RecordingClient:
    """Stands in for a Dask client: records what a render graph submits, runs nothing."""

    def __init__(self):
        self.submitted: dict[str, tuple] = {}

    def scheduler_info(self):
        return {"workers": {}}

    def submit(self, fn, *args, key, **kwargs):
        fut = _Submitted(key)
        self.submitted[key[1]] = tuple(a for a in args if isinstance(a, _Submitted))
        return fut


class _Submitted:
    def __init__(self, key):
        self.key = key


def test_sketch_clip_waits_only_for_the_sketch(tmp_path):
    """The clip is written as soon as stage 1 ends: its task depends on the upscaled sketch alone,
    the same input as stage 2's first tiles, so it never waits for refinement."""
    from supergen_dask.graph import _Graph, prepare_store
    from supergen_dask.plan import plan_render

    plan = plan_render(tiny_spec(num_inference_steps=5, refine_steps=3))
    store = prepare_store(plan, tmp_path / "r")
    client = _RecordingClient()
    _Graph(client, plan, store, 1, tmp_path / "r" / "video.mp4").build()
    deps = {name: [d.key[1] for d in ds] for name, ds in client.submitted.items()}
    assert deps["sketchpreview"] == ["upscale"]
    assert all(deps[f"start_{r}_{c}"] == ["upscale"] for r, c in plan.refine.grid.tiles())


def test_preview_command_decodes_any_stored_step(handles, tmp_path, capsys):
    from supergen_dask.cli import main  # the command, in this process (the session's models are loaded)

    h = handles[0][0]
    steps = stored_steps(h.render_dir)
    assert steps == list(h.plan.refine.steps)
    mid = steps[len(steps) // 2]
    png = tmp_path / "mid.png"
    assert main(["preview", str(h.render_dir), "--step", str(mid), "--out", str(png)]) == 0
    pixels = h.preview(mid)
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), contact_sheet(pixels, 4))
    # the last step decodes to the video's size (whole-canvas decode; the video's is by regions)
    from storage import RenderStore

    assert h.preview(steps[-1]).shape == RenderStore.open(str(h.store_path), mode="r").decoded_frames().shape
    clip = tmp_path / "sketch-step.mp4"
    sk = h.plan.sketch.steps[0]
    argv = ["preview", str(h.render_dir), "--step", str(sk), "--stage", "sketch", "--out", str(clip)]
    assert main(argv) == 0
    assert probe_video(clip).frames == h.plan.spec.num_frames
    capsys.readouterr()
    assert main(["preview", str(h.render_dir), "--step", "999"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "999" in err
    assert len(err.splitlines()) == 1
