"""Render directories on object storage: an S3-compatible server (moto's standalone server) that
the test starts itself, reached through s3fs, end to end, including a killed render resumed."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import numpy as np
import pytest
import s3fs
import zarr
from conftest import tiny_spec

import supergen_dask as sd
from storage import Location, RenderStore, probe_video
from supergen_dask import dirlock
from supergen_dask.batch import is_finished, resolve_entries, run_batch
from supergen_dask.cli import EXIT_BAD_INPUT, main
from supergen_dask.graph import default_render_dir, prepare_store
from supergen_dask.plan import plan_render
from supergen_dask.preview import write_preview
from supergen_dask.report import write_report
from supergen_dask.spec import RenderSpec

# 2x2 refinement tiles, 4 refinement steps and a seam pass: a kill after the first finished
# refinement tile lands inside stage 2 (5 frames: every request to the server costs time here)
SPEC = tiny_spec(prompt="a green square moving up", num_frames=5)
CREDENTIALS = {
    # through the AWS variables botocore reads, as a deployment would give them
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    """moto's standalone S3 server on a free port, in its own process (a server thread in this
    process would compete with the in-process render for the interpreter)."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.time() + 60
    while time.time() < deadline:
        found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("moto server did not start")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An empty bucket ``bucket`` on a private S3 server; the ``supergen.storage.options`` setting
    points this process at it (the credentials come from the environment)."""
    proc, endpoint = _start_moto(tmp_path_factory.mktemp("moto") / "server.log")
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    # one request per chunk read: s3fs's concurrent reads ask for each object's size first
    options = {"endpoint_url": endpoint, "max_concurrency": 1}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("bucket")
    try:
        with dask.config.set({"supergen.storage.options": options}):
            yield type("S3", (), {"options": options, "fs": fs, "endpoint": endpoint})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def reference(s3, client):
    """SPEC rendered uninterrupted under ``s3://bucket/renders``."""
    return sd.render_batch([SPEC], client, root="s3://bucket/renders", progress=False)[0]


def _records(location: Location) -> dict[str, np.ndarray]:
    """A store's records of its content: the CRC-32 of every latent, state, start, prompt and
    pixel chunk, the done markers, and the final latents themselves (reading every chunk of two
    stores from the server would cost more than the renders' differences could show)."""
    root = zarr.open_group(location.url, mode="r", storage_options=location.storage_options)
    out = {name: root[name][...] for name in ("prompt_checksum", "task_done", "decoded/checksums")}
    for stage, group in root.groups():
        for name in ("checksums", "start_checksums", "done"):
            if name in group:
                out[f"{stage}/{name}"] = group[name][...]
    assert {"sketch/checksums", "refine/checksums"} <= set(out)
    out["refine/latents[-1]"] = root["refine/latents"][-1]
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_render_under_an_s3_store_root_writes_store_and_videos_to_the_bucket(s3, reference):
    plan = plan_render(SPEC)
    where = reference.render_dir
    assert isinstance(where, Location)
    assert where.url == f"s3://bucket/renders/a-green-square-moving-up-{plan.token[:8]}"
    key = where.path
    names = {p.rsplit("/", 1)[-1] for p in s3.fs.ls(key, refresh=True)}
    # the store, the video and the sketch clip beside it; segments and the lock are gone
    assert names == {"render.zarr", "video.mp4", "sketch.mp4"}
    assert s3.fs.exists(f"{key}/render.zarr/zarr.json")
    assert not s3.fs.exists(f"{key}/segments")
    video = reference.video_path.read_bytes()
    assert video == s3.fs.cat_file(f"{key}/video.mp4")
    with reference.video_path.local_copy() as local:
        info = probe_video(local)
    assert (info.frames, info.width, info.height) == (SPEC.num_frames, SPEC.width, SPEC.height)
    assert reference.open_store().is_finished()


def test_xarray_view_opens_from_s3(s3, reference):
    url = f"{reference.render_dir}/render.zarr"
    ds = sd.open_render(url, storage_options=s3.options)
    assert ds.attrs["store"] == url
    assert bool(ds.done.all())
    final = ds.latents.sel(step=ds.steps_kept[-1]).values
    assert np.isfinite(final).all() and final.std() > 0
    # the same values as the store's own un-rolled read of the last step
    store = RenderStore.open(Location(url, s3.options), mode="r")
    st = store.stage("refine")
    whole = store.read_canvas("refine", "latents", st.steps[-1])[..., : st.valid_h, : st.valid_w]
    np.testing.assert_array_equal(final, whole)


def test_commands_on_a_render_directory_in_the_bucket(s3, reference, client, capsys):
    url = reference.render_dir.url
    assert main(["info", url]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["video"] == f"{url}/video.mp4" and info["progress"]["refine"] == "16/16 tiles"
    assert main(["verify", url]) == 0
    assert "corrupt" not in capsys.readouterr().out
    # a batch under the same store root finds the render finished and does no work for it
    (entry,) = resolve_entries({}, [SPEC.to_dict()], "s3://bucket/renders")
    assert entry.error is None and entry.render_dir == reference.render_dir
    assert is_finished(entry.render_dir, entry.plan.token)
    (outcome,) = run_batch([entry], client)
    assert outcome.status == "skipped"


def _cli_env(s3) -> dict[str, str]:
    # the command line reaches the server through the supergen.storage.options setting, given as
    # a Dask environment variable, and the AWS credential variables
    return {
        **os.environ,
        **CREDENTIALS,
        "DASK_SUPERGEN__STORAGE__OPTIONS": repr(s3.options),
        "PYTHONUNBUFFERED": "1",
    }


def _wait_for_stage2(location: Location, proc: subprocess.Popen, timeout: float = 300) -> RenderStore:
    """The store, once a refinement tile is finished (polled sparingly: every read is a request)."""
    deadline = time.time() + timeout
    store = None
    while store is None or not store.done_mask("refine").any():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "stage 2 did not start in time"
        time.sleep(0.2)
        if store is None:
            try:  # made, and its attributes written (they come last)
                store = RenderStore.open(location / "render.zarr", mode="r")
            except (FileNotFoundError, ValueError, KeyError):
                pass
    return store


@pytest.mark.slow
def test_killed_cli_render_on_s3_resumes_to_identical_bytes(s3, reference, client, tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC.to_dict()))
    plan = plan_render(RenderSpec.from_dict(SPEC.to_dict()))
    assert plan.token == reference.plan.token  # the same render, under another store root
    target = default_render_dir(plan, Location("s3://bucket/killed", s3.options))
    proc = subprocess.Popen(
        [sys.executable, "-m", "supergen_dask.cli", "render", "--spec", str(spec_file)]
        + ["--store-root", "s3://bucket/killed", "--threads", "--workers", "2", "--no-progress"],
        start_new_session=True,
        env=_cli_env(s3),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        store = _wait_for_stage2(target, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker threads, mid-stage-2
        proc.wait()
    before = store.done_mask("refine")
    assert 0 < before.sum() < before.size, "the kill must land inside stage 2"
    store = RenderStore.open(target / "render.zarr", mode="r")  # its attributes as they are now
    assert store.attrs["sessions"][-1]["status"] == "running"  # killed, never finished
    assert not (target / "video.mp4").exists()
    lock = target / dirlock.LOCK_NAME
    assert json.loads(lock.read_bytes())["pid"] == proc.pid  # left behind by the killed run

    # resumed from its URL as `supergen resume` does: the killed run's lock is stale (its process
    # is gone), so it is taken over at once; the killed run's session is marked as such
    with dirlock.render_dir_lock(target.url, wait=False):
        dirlock.mark_dead_sessions(RenderStore.open(target / "render.zarr"))
        resumed = sd.resume(target.url, client=client, progress=False)
    assert not lock.exists()
    assert resumed.video_path == target / "video.mp4"

    store = RenderStore.open(target / "render.zarr", mode="r")
    assert [s["status"] for s in store.attrs["sessions"]] == ["killed", "finished"]
    stats = store.tile_stats("refine")
    # tiles finished before the kill were not recomputed
    assert np.all(stats["session"][before] == 1) and np.all(stats["session"][~before] == 2)
    resumed_video = (target / "video.mp4").read_bytes()
    assert _sha256(resumed_video) == _sha256(reference.video_path.read_bytes())
    want, got = _records(reference.render_dir / "render.zarr"), _records(target / "render.zarr")
    assert (want["refine/checksums"] >= 0).any()  # records to compare
    for name in want:
        assert np.array_equal(want[name], got[name], equal_nan=True), f"{name} differs"


def test_lock_object_on_s3_is_exclusive_and_stale_locks_are_taken_over(s3):
    where = Location("s3://bucket/locks/r", s3.options)
    lock = where / dirlock.LOCK_NAME
    with dirlock.render_dir_lock(where):
        holder = json.loads(lock.read_bytes())
        assert holder["pid"] == os.getpid()
        with pytest.raises(dirlock.RenderDirBusyError, match=f"pid {os.getpid()}"):
            with dirlock.render_dir_lock(where, wait=False):
                pass
    assert not lock.exists()
    # a process of this host that no longer exists: taken over at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = {"host": holder["host"], "pid": int(dead.stdout), "token": "x", "expires": time.time() + 3600}
    lock.write_bytes(json.dumps(stale).encode())
    with dirlock.render_dir_lock(where, wait=False):
        assert json.loads(lock.read_bytes())["pid"] == os.getpid()
    # another host: busy while its lease runs, stale once it has run out
    other = {"host": "elsewhere", "pid": 1, "token": "y", "expires": time.time() + 3600}
    lock.write_bytes(json.dumps(other).encode())
    with pytest.raises(dirlock.RenderDirBusyError, match="on elsewhere"):
        with dirlock.render_dir_lock(where, wait=False):
            pass
    lock.write_bytes(json.dumps({**other, "expires": time.time() - 1}).encode())
    with dirlock.render_dir_lock(where, wait=False):
        assert json.loads(lock.read_bytes())["host"] == holder["host"]
    assert not lock.exists()
    # the owner renews its lease while it holds the lock
    with dirlock._object_lock(where, wait=False, poll=0.1, announce=None, lease=0.6):
        first = json.loads(lock.read_bytes())["expires"]
        deadline = time.time() + 10
        while json.loads(lock.read_bytes())["expires"] == first:
            assert time.time() < deadline, "the lease was not renewed"
            time.sleep(0.1)
    assert not lock.exists()


def test_missing_bucket_is_bad_input_before_anything_runs(s3, capsys):
    code = main(
        ["render", "--model", "tiny-random-wan", "--prompt", "x", "--output-dir", "s3://no-such-bucket/r"]
    )
    assert code == EXIT_BAD_INPUT
    assert "no-such-bucket" in capsys.readouterr().err
    assert "no-such-bucket" not in [b["name"] for b in s3.fs.ls("", refresh=True, detail=True)]


def test_report_and_preview_beside_a_store_on_s3(s3, reference):
    page = write_report([reference.render_dir], "s3://bucket/reports/nightly")
    assert isinstance(page, Location) and page.url == "s3://bucket/reports/nightly/index.html"
    html = page.read_text()
    name = reference.render_dir.name
    # links relative to the page, so the bucket's two folders can move together
    assert f'href="../../renders/{name}/video.mp4"' in html
    assert s3.fs.exists(f"bucket/reports/nightly/{name}-video.png")

    step = reference.plan.refine.steps[-1]
    preview = write_preview(reference.render_dir, step)
    assert isinstance(preview, Location)
    assert preview.url == f"{reference.render_dir}/preview-refine-{step}.png"
    assert preview.read_bytes().startswith(b"\x89PNG")


def test_locations_of_local_paths_and_file_urls_keep_to_the_local_filesystem(tmp_path, s3):
    plain = Location(str(tmp_path / "a") + "/")
    assert plain.native() == tmp_path / "a" and plain.is_local
    url = Location(f"file://{tmp_path}/b", {"ignored": True})
    assert url.storage_options is None and url.native() == tmp_path / "b"
    assert (url / "x.bin").url == f"file://{tmp_path}/b/x.bin"
    (url / "x.bin").write_bytes(b"abc")
    assert (tmp_path / "b" / "x.bin").read_bytes() == b"abc"
    with pytest.raises(FileExistsError):
        (url / "x.bin").create_exclusive(b"def")
    with (url / "y.bin").local_target() as path:
        assert path == tmp_path / "b" / "y.bin"  # the file itself: the writer renames it in place
    # a store made under a file:// URL is a local store, made through the local atomic rename
    plan = plan_render(SPEC)
    store = prepare_store(plan, f"file://{tmp_path}/r")
    assert (tmp_path / "r" / "render.zarr" / "zarr.json").exists()
    assert store.attrs["plan"]["token"] == plan.token
    # remote locations carry their options through pickling (to the workers)
    remote = Location("s3://bucket/renders/x", s3.options) / "render.zarr"
    again = pickle.loads(pickle.dumps(remote))
    assert again == remote and again.storage_options == s3.options
    assert (remote.name, remote.parent.url) == ("render.zarr", "s3://bucket/renders/x")


def test_store_whose_creation_was_cut_short_on_s3_is_made_again(s3):
    plan = plan_render(SPEC)
    where = Location("s3://bucket/cut-short/r", s3.options)
    # what a kill during creation leaves (no rename on object storage): arrays, and no root (it
    # is uploaded last)
    root = zarr.open_group((where / "render.zarr").url, mode="w-", storage_options=s3.options)
    root.create_array("prompt_embeds", shape=(1,), dtype="float32")
    root.create_array("task_done", shape=(1,), dtype="uint8")
    (where / "render.zarr" / "zarr.json").unlink()
    store = prepare_store(plan, where)
    assert store.attrs["plan"]["token"] == plan.token and not store.is_finished()
    # a Zarr group that is not such a leftover is never deleted
    other = Location("s3://bucket/cut-short/foreign", s3.options)
    zarr.open_group((other / "render.zarr").url, mode="w-", storage_options=s3.options)
    with pytest.raises(sd.RenderExistsError, match="already holds a different render"):
        prepare_store(plan, other)
    assert (other / "render.zarr" / "zarr.json").exists()
