"""Damaged chunks are found, never used, and recomputed by resume to the same bytes; non-finite
latents stop a render; the pre-flight estimate matches the store a render creates."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_renders_identical, local_client, tiny_spec
from hypothesis import given, settings
from hypothesis import strategies as st

import supergen_dask as sd
from storage import ChunkCorruptError, RenderStore, layout_nbytes
from supergen_dask.cli import main
from supergen_dask.integrity import repair_store, verify_render

pytestmark = pytest.mark.slow

# the default storage (float16, retention): what the command line below renders
DEFAULT_SPEC = tiny_spec(prompt="a green circle moving up", num_inference_steps=6, refine_steps=4, seed=5)
# every step kept: most tests here damage intermediate chunks and rewind markers
SPEC = DEFAULT_SPEC.replace(output=sd.OutputSettings(keep_every=1, keep_history=True))


@pytest.fixture(scope="module")
def pclient():
    """A multi-process local cluster (workers read and write the store from other processes)."""
    with local_client(2, processes=True) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pclient) -> Path:
    out = tmp_path_factory.mktemp("reference") / "r"
    sd.render(SPEC, output_dir=out, client=pclient, progress=False)
    return out


@pytest.fixture(scope="module")
def default_reference(tmp_path_factory, pclient) -> Path:
    """``DEFAULT_SPEC`` rendered uninterrupted (intermediate steps freed as it goes)."""
    out = tmp_path_factory.mktemp("default_reference") / "r"
    sd.render(DEFAULT_SPEC, output_dir=out, client=pclient, progress=False)
    return out


def _damage(path: Path, how: str) -> None:
    assert path.is_file(), path
    if how == "flip":
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 64] = bytes((b ^ 0x5A) for b in data[mid : mid + 64])
        path.write_bytes(bytes(data))
    elif how == "truncate":
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size // 2)
    elif how == "delete":
        path.unlink()
    else:
        raise ValueError(how)


def _rewind(out: Path, stage: str | None, from_index: int, tasks: tuple[str, ...] = ()) -> None:
    """Make a finished render look killed: ``stage``'s steps from ``from_index`` on unfinished,
    the decode and encode undone, the video gone (what a kill at that point leaves)."""
    store = RenderStore.open(str(out / "render.zarr"))
    stages = [s.name for s in store.layout.stages]
    for name in stages[stages.index(stage) :] if stage else []:
        a = store.array(f"{name}/done")
        a[from_index if name == stage else 0 :] = 0
    for task in store.layout.tasks:
        if task.startswith(("decode", "encode")) or task in tasks:
            store.clear_task_done(task)
    (out / "video.mp4").unlink()


# (array chunk under render.zarr, damage, stage rewound, from step index, extra tasks undone)
CASES = {
    "refine-latents-flipped": ("refine/latents/c/1/0/0/0/1", "flip", "refine", 2, ()),
    "refine-latents-deleted": ("refine/latents/c/1/0/0/1/1", "delete", "refine", 2, ()),
    "refine-state-truncated": ("refine/state_model_outputs/c/1/0/0/0/1/0", "truncate", "refine", 2, ()),
    "refine-last-step-flipped": ("refine/latents/c/3/0/0/1/0", "flip", None, 0, ()),
    "sketch-latents-flipped": ("sketch/latents/c/5/0/0/0/0", "flip", "refine", 0, ("upscale",)),
    "refine-start-truncated": ("refine/start/c/0/0/1/1", "truncate", "refine", 0, ()),
    "prompt-flipped": ("prompt_embeds/c/0/0/0", "flip", "refine", 2, ()),
    "decoded-region-flipped": ("decoded/region_1_0/c/0/0/0/0", "flip", None, 0, ()),
}


@pytest.mark.parametrize("chunk, how, stage, index, tasks", CASES.values(), ids=list(CASES))
def test_damaged_chunk_is_recomputed_by_resume_bit_identical(
    tmp_path, reference, pclient, chunk, how, stage, index, tasks
):
    out = tmp_path / "r"
    shutil.copytree(reference, out)
    _rewind(out, stage, index, tasks)
    _damage(out / "render.zarr" / chunk, how)
    before = RenderStore.open(str(out / "render.zarr"), mode="r")
    done_before = before.done_mask("refine").sum() + before.done_mask("sketch").sum()

    result = sd.resume(out, client=pclient, progress=False)

    recomputed = [r for r in result.receipts if r.get("task") == "denoise"]
    pending = sum(len(s.steps) * s.grid.n_tiles for s in result.plan.stages) - done_before
    assert len(recomputed) >= pending  # the damaged work came on top of what was left
    assert verify_render(out).ok
    assert_renders_identical(reference, out)


def test_corruption_is_reported_never_used_and_repaired_on_request(tmp_path, reference, pclient, capsys):
    out = tmp_path / "r"
    shutil.copytree(reference, out)
    assert main(["verify", str(reference)]) == 0
    capsys.readouterr()
    _damage(out / "render.zarr" / "refine/latents/c/3/0/0/0/1", "flip")
    # a reader gets an error naming the chunk instead of 3e38
    with pytest.raises(ChunkCorruptError, match=r"refine/latents step 5 tile \(0, 1\)"):
        sd.open_render(str(out / "render.zarr")).latents.values  # noqa: B018
    # verify finds it (exit 1), --repair clears its marker, resume recomputes exactly that tile
    assert main(["verify", str(out)]) == 1
    assert "refine/latents step 5 tile (0, 1)" in capsys.readouterr().out
    assert main(["verify", str(out), "--repair"]) == 1
    store = RenderStore.open(str(out / "render.zarr"), mode="r")
    assert not store.is_done("refine", 5, 0, 1) and store.done_mask("refine").sum() == 15
    result = sd.resume(out, client=pclient, progress=False)
    assert [r["name"] for r in result.receipts if r.get("task") == "denoise"] == ["refine/5/0/1"]
    assert main(["verify", str(out)]) == 0
    assert_renders_identical(reference, out)


def test_repair_leaves_an_intact_render_alone(tmp_path, reference):
    out = tmp_path / "r"
    shutil.copytree(reference, out)
    _rewind(out, "refine", 1)
    store = RenderStore.open(str(out / "render.zarr"))
    plan = sd.load_plan(out)
    assert repair_store(plan, store, video_exists=False) == []
    assert store.done_mask("refine")[0].all() and not store.done_mask("refine")[1:].any()


def test_non_finite_latents_stop_the_render_naming_the_tile(tmp_path, pclient, capsys):
    spec = tiny_spec(guidance_scale=1e30, num_inference_steps=3, refine_steps=2)
    with pytest.raises(sd.RenderError, match=r"non-finite latents .* (sketch|refine) step \d+ tile"):
        sd.render(spec, output_dir=tmp_path / "r", client=pclient, progress=False)
    assert not (tmp_path / "r" / "video.mp4").exists()
    # from the command line: one line, exit 1, the resume command
    argv = ["render", "--model", "tiny-random-wan", "--prompt", "x", "--num-frames", "9", "--height", "64"]
    argv += ["--num-inference-steps", "2", "--refine-steps", "1", "--guidance-scale", "1e30"]
    argv += ["--output-dir", str(tmp_path / "cli"), "--threads", "--workers", "1", "--no-progress"]
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "non-finite" in err[0] and "supergen resume" in err[0], err


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")


def test_estimate_matches_the_store(reference):
    plan = sd.load_plan(reference)
    est = plan.estimate()
    assert est.store_parts == layout_nbytes(plan.layout())
    store = reference / "render.zarr"
    arrays = ["latents", "start", "state_model_outputs", "state_last_sample", "prediction"]
    written = sum(
        _du(store / s / a) for s in ("sketch", "refine") for a in arrays if (store / s / a).exists()
    )
    # latents and scheduler state are stored raw (no compressor by default): exactly as estimated
    assert written == est.store_parts["latents"] + est.store_parts["state"]
    total = _du(store)
    assert 0.5 * est.store_bytes <= total <= est.store_bytes * 1.1


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(8, 4096).map(lambda v: v * 8),
    width=st.integers(8, 4096).map(lambda v: v * 8),
    frames=st.integers(0, 200).map(lambda k: 1 + 4 * k),
    steps=st.integers(1, 60),
    anchor=st.booleans(),
    fp16=st.booleans(),
    keep_every=st.sampled_from([None, 0, 1, 3]),
    keep_history=st.sampled_from([None, True, False]),
)
def test_estimate_is_the_layouts_bytes(height, width, frames, steps, anchor, fp16, keep_every, keep_history):
    import dask.config

    spec = tiny_spec(
        height=height,
        width=width,
        num_frames=frames,
        num_inference_steps=steps,
        refine_steps=max(1, steps - 1) if anchor else steps,
        anchor=sd.AnchorSettings(strength=0.5 if anchor and steps > 1 else 0.0),
        output=sd.OutputSettings(
            store_dtype="float16" if fp16 else "float32", keep_every=keep_every, keep_history=keep_history
        ),
    )
    with dask.config.set({"supergen.limits.enabled": False}):
        plan = sd.plan_render(spec)
    est = plan.estimate()
    if est.tile_tasks < 20000:  # the layout holds one object per decode region: keep it small
        assert est.store_parts == layout_nbytes(plan.layout())
    assert est.tile_tasks == plan.n_tile_tasks() and est.task_bytes > 0
    assert np.isfinite(est.store_bytes) and est.store_bytes <= est.store_peak_bytes


def test_full_disk_is_one_line_and_resumes_bit_identical(
    tmp_path, default_reference, pclient, monkeypatch, capsys
):
    import errno

    calls = {"n": 0}
    mark_done = RenderStore.mark_done

    def full_after_ten(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise OSError(errno.ENOSPC, "No space left on device", self.url)
        return mark_done(self, *args, **kwargs)

    monkeypatch.setattr(RenderStore, "mark_done", full_after_ten)  # in-process (thread) workers
    out = tmp_path / "r"
    argv = ["render", "--model", "tiny-random-wan", "--prompt", SPEC.prompt, "--seed", str(SPEC.seed)]
    argv += ["--height", "128", "--width", "128", "--num-frames", "9", "--guidance-scale", "5.0"]
    argv += ["--num-inference-steps", "6", "--refine-steps", "4", "--output-dir", str(out)]
    assert main([*argv, "--threads", "--workers", "1", "--no-progress"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "No space left" in err[0] and f"supergen resume {out}" in err[0], err
    monkeypatch.undo()
    sd.resume(out, client=pclient, progress=False)
    assert_renders_identical(default_reference, out)


def test_two_runs_on_one_directory_do_the_work_once(tmp_path, default_reference):
    import os
    import subprocess
    import sys

    out = tmp_path / "r"
    argv = ["render", "--model", "tiny-random-wan", "--prompt", SPEC.prompt, "--seed", str(SPEC.seed)]
    argv += ["--height", "128", "--width", "128", "--num-frames", "9", "--guidance-scale", "5.0"]
    argv += ["--num-inference-steps", "6", "--refine-steps", "4", "--output-dir", str(out)]
    argv += ["--threads", "--workers", "1", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "supergen_dask.cli", *argv]
    runs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    time.sleep(0.5)
    runs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [r.communicate(timeout=600) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    assert any("being rendered by another run" in err for _, err in outputs), outputs
    store = RenderStore.open(str(out / "render.zarr"), mode="r")
    for stage in ("sketch", "refine"):  # every tile computed once, by one session
        sessions = store.tile_stats(stage)["session"]
        assert len(np.unique(sessions)) == 1, sessions
    assert [s["status"] for s in store.attrs["sessions"]] == ["finished", "finished"]
    assert_renders_identical(default_reference, out)


def test_a_killed_session_is_marked_by_the_next_run(tmp_path, reference):
    out = tmp_path / "r"
    shutil.copytree(reference, out)
    store = RenderStore.open(str(out / "render.zarr"))
    store.update_attrs(sessions=[*store.attrs["sessions"], {"session": 2, "status": "running"}])
    _rewind(out, None, 0)
    argv = ["resume", str(out), "--threads", "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    statuses = [s["status"] for s in RenderStore.open(str(out / "render.zarr")).attrs["sessions"]]
    assert statuses == ["finished", "killed", "finished"]
    assert_renders_identical(reference, out)


# -- image-to-video: the stored image condition ---------------------------------------------------
@pytest.fixture(scope="module")
def i2v_reference(tmp_path_factory, pclient) -> Path:
    """A 2x2-tile Wan 2.1 I2V render (its condition: canvas chunks and CLIP image tokens)."""
    from PIL import Image

    from pipelines.wan import save_tiny_pipeline

    root = tmp_path_factory.mktemp("i2v")
    model = save_tiny_pipeline(root / "wan-i2v", variant="2.1-i2v")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "first.png")
    spec = SPEC.replace(
        model=str(model), image=str(root / "first.png"), num_inference_steps=3, refine_steps=2
    )
    import dask.config

    # 2 cells of VAE context instead of 8 (at this size every region would decode the whole canvas)
    with dask.config.set({"supergen.decode.margin": 2, "supergen.upscale.margin": 2}):
        sd.render(spec, output_dir=root / "r", client=pclient, progress=False)
    return root / "r"


@pytest.mark.parametrize(
    "chunk, where",
    [
        ("refine/image/c/0/0/0/1", r"refine/image tile \(0, 1\)"),
        ("refine/image_embeds/c/0/0", "refine/image_embeds"),
    ],
    ids=["canvas-chunk", "embeddings"],
)
def test_damaged_image_condition_is_found_and_encoded_again_by_resume(
    tmp_path, i2v_reference, pclient, chunk, where
):
    out = tmp_path / "r"
    shutil.copytree(i2v_reference, out)
    _rewind(out, "refine", 1)  # the last refinement step still to do: it reads the condition
    _damage(out / "render.zarr" / chunk, "flip")
    report = verify_render(out)
    assert not report.ok and any(
        re.search(f"corrupt chunk {where}: checksum mismatch", p) for p in report.problems
    )
    # a tile reading it gets an error naming the chunk, never the damaged values
    store = RenderStore.open(str(out / "render.zarr"), mode="r")
    plan = sd.load_plan(out)
    from supergen_dask.conditioning import tile_image
    from supergen_dask.geometry import TileKey

    with pytest.raises(ChunkCorruptError, match=where):
        tile_image(store, plan, TileKey("refine", plan.refine.steps[-1], 0, 1), "cpu")

    result = sd.resume(out, client=pclient, progress=False)

    redone = [r for r in result.receipts if r.get("name") == "image_refine"]
    assert len(redone) == 1 and not redone[0].get("skipped")  # encoded again, once
    assert verify_render(out).ok
    assert_renders_identical(i2v_reference, out)
