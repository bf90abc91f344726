"""The nightly runner: idempotent batches, kill and re-run, bad entries, the summary and exit codes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from storage import RenderStore
from supergen_dask.batch import (
    BatchFileError,
    batch_exit_code,
    entry_fields,
    load_batch,
    resolve_entries,
)
from supergen_dask.spec import SpecError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# 2x2 tiles, 10 steps of which 8 tiled: a render takes a few seconds, so a kill lands inside one
DEFAULTS = {
    "model": "tiny-random-wan",
    "size": "128x128",
    "frames": 9,
    "steps": 10,
    "k": 8,
    "guidance_scale": 5.0,
}
PROMPTS = [
    "a red circle moving right",
    "a green square moving left",
    "a blue triangle moving up",
    "a yellow circle moving down",
]


def _write_batch(path: Path, renders: list[dict], defaults: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"defaults": defaults or DEFAULTS, "renders": renders}))
    return path


def _valid_renders() -> list[dict]:
    return [{"prompt": p, "seed": i} for i, p in enumerate(PROMPTS)]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def _batch_cmd(batch: Path, root: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "supergen_dask.cli",
        "batch",
        str(batch),
        "--store-root",
        str(root),
        "--parallel",
        "1",
        "--workers",
        "2",
        "--threads",
        *extra,
    ]


def _run_batch(batch: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    """``supergen batch`` in this process (only the killed run below needs a process of its own):
    its exit code and output."""
    from supergen_dask.cli import main

    argv = _batch_cmd(batch, root, *extra)[3:]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _render_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "render.zarr").exists())


def _sessions(d: Path) -> list[dict]:
    return RenderStore.open(str(d / "render.zarr"), mode="r").attrs["sessions"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, str]:
    """The batch run once, start to end: sha256 of each render's mp4 by directory name."""
    tmp = tmp_path_factory.mktemp("batch-ref")
    batch = _write_batch(tmp / "jobs.yaml", _valid_renders())
    done = _run_batch(batch, tmp / "renders", "--no-report")
    assert done.returncode == 0, done.stdout + done.stderr
    dirs = _render_dirs(tmp / "renders")
    assert len(dirs) == len(PROMPTS)
    return {d.name: _sha(d / "video.mp4") for d in dirs}


def _partly_done(root: Path) -> bool:
    """One render finished and another with some, not all, refinement tiles done."""
    if not root.exists():
        return False
    dirs = [p for p in root.iterdir() if p.is_dir()]
    finished = [d for d in dirs if (d / "video.mp4").exists()]
    partial = False
    for d in dirs:
        try:
            mask = RenderStore.open(str(d / "render.zarr"), mode="r").done_mask("refine")
        except Exception:  # noqa: BLE001 - a store being created
            continue
        partial |= 0 < mask.sum() < mask.size
    return bool(finished) and partial and len(finished) < len(PROMPTS)


def test_killed_batch_reruns_to_the_same_bytes_each_render_finished_once(tmp_path, uninterrupted):
    batch = _write_batch(tmp_path / "jobs.yaml", _valid_renders())
    root = tmp_path / "renders"
    proc = subprocess.Popen(
        _batch_cmd(batch, root, "--no-report"),
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 600
        while not _partly_done(root):
            assert proc.poll() is None, "the batch ended before it could be killed mid-way"
            assert time.time() < deadline, "the batch never got half-way"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = {d.name for d in _render_dirs(root) if not (d / "video.mp4").exists()}
    finished_before = {d.name for d in _render_dirs(root) if (d / "video.mp4").exists()}
    assert killed and finished_before
    masks = {}
    for name in killed:
        store = RenderStore.open(str(root / name / "render.zarr"), mode="r")
        masks[name] = (store.done_mask("refine"), store.tile_stats("refine")["session"].copy())
    assert any(0 < m.sum() < m.size for m, _ in masks.values()), "no render was interrupted mid-way"

    again = _run_batch(batch, root)
    assert again.returncode == 0, again.stdout + again.stderr
    dirs = _render_dirs(root)
    assert {d.name: _sha(d / "video.mp4") for d in dirs} == uninterrupted
    for d in dirs:
        statuses = [s["status"] for s in _sessions(d)]
        assert statuses.count("finished") == 1, (d.name, statuses)  # every render finished once
        if d.name in finished_before:
            assert statuses == ["finished"]  # skipped by the re-run: no new session
    for name, (before, sessions_before) in masks.items():
        statuses = [s["status"] for s in _sessions(root / name)]
        assert statuses == ["killed", "finished"], statuses
        after = RenderStore.open(str(root / name / "render.zarr"), mode="r").tile_stats("refine")["session"]
        # tiles finished before the kill were not recomputed; the rest were computed by the re-run
        np.testing.assert_array_equal(after[before], sessions_before[before])
        assert np.all(after[~before] == 2)
    # the summary table names every render; finished-before ones are skipped
    for name in finished_before:
        assert any(name in line and "skipped" in line for line in again.stdout.splitlines())
    assert (root / "jobs-report" / "index.html").exists()


def test_rerunning_a_finished_batch_does_no_model_work(tmp_path, client):
    from supergen_dask import worker_models
    from supergen_dask.batch import run_batch

    defaults = {**DEFAULTS, "steps": 4, "k": 3}
    renders = [{"prompt": p, "seed": i} for i, p in enumerate(PROMPTS[:2])]
    entries = resolve_entries(defaults, renders, tmp_path)
    first = run_batch(entries, client)
    assert [o.status for o in first] == ["finished", "finished"]
    # the workers are threads of this process: with its models dropped, any model work would load one
    worker_models.clear()
    before = worker_models.load_count()
    again = run_batch(resolve_entries(defaults, renders, tmp_path), client)
    loads = client.run(worker_models.load_count)
    assert [o.status for o in again] == ["skipped", "skipped"]
    assert all(o.tile_tasks_run == 0 and o.attempts == 0 for o in again)
    assert loads and all(n == before for n in loads.values()), (before, loads)  # no model was loaded
    for e in entries:
        assert [s["status"] for s in _sessions(e.render_dir)] == ["finished"]  # no session started
    assert batch_exit_code(again) == 0


def test_bad_entries_are_reported_and_the_valid_ones_render(tmp_path):
    renders = [
        {"prompt": PROMPTS[0], "seed": 0},
        {"prompt": "unknown key", "colour": "red"},
        {"prompt": PROMPTS[1], "seed": 1, "size": "64x64"},
        {"prompt": "bad size", "size": "100x128"},
        {"prompt": "no model", "model": str(tmp_path / "no-such-model")},
        {"prompt": "no image", "image": "missing.png"},
    ]
    defaults = {**DEFAULTS, "steps": 4, "k": 3}
    batch = _write_batch(tmp_path / "jobs.yaml", renders, defaults)
    out = _run_batch(batch, tmp_path / "renders")
    assert out.returncode == 2, out.stdout + out.stderr  # bad input: documented exit code 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: entry")]
    assert len(errors) == 4, out.stderr
    assert "entry 1:" in errors[0] and "colour" in errors[0] and "unknown field" in errors[0]
    assert "entry 3:" in errors[1] and "width" in errors[1] and "100" in errors[1]
    assert "entry 4:" in errors[2] and "model" in errors[2] and "no-such-model" in errors[2]
    assert "entry 5:" in errors[3] and "image" in errors[3] and "missing.png" in errors[3]
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line[:1].isdigit()}
    assert [rows[str(i)].split()[1] for i in range(6)] == [
        "finished",
        "invalid",
        "finished",
        "invalid",
        "invalid",
        "invalid",
    ]
    assert "total: 2 finished, 0 skipped, 0 failed, 4 invalid" in out.stdout
    dirs = _render_dirs(tmp_path / "renders")
    assert len(dirs) == 2 and all((d / "video.mp4").exists() for d in dirs)


def test_failed_render_is_retried_a_bounded_number_of_times(tmp_path, client, monkeypatch):
    from supergen_dask import batch as batch_mod
    from supergen_dask.graph import RenderError

    calls = []

    class Failing:
        def wait(self, progress=False):
            calls.append(1)
            raise RenderError("task x failed: boom")

    monkeypatch.setattr("supergen_dask.graph.start_render", lambda *a, **k: Failing())
    entries = resolve_entries({**DEFAULTS, "steps": 4, "k": 3}, [{"prompt": PROMPTS[0]}], tmp_path)
    (outcome,) = batch_mod.run_batch(entries, client, retries=2)
    assert outcome.status == "failed" and outcome.attempts == 3 and len(calls) == 3
    assert "boom" in outcome.error
    assert batch_exit_code([outcome]) == 1


def test_entry_fields_short_names_and_nested_merge():
    fields = entry_fields(
        {"size": "256x128", "frames": 9, "output": {"crf": 12, "codec": "h264"}},
        {"prompt": "x", "steps": 4, "k": 2, "output": {"crf": 20}},
    )
    assert fields == {
        "height": 128,
        "width": 256,
        "num_frames": 9,
        "output": {"crf": 20, "codec": "h264"},
        "prompt": "x",
        "num_inference_steps": 4,
        "refine_steps": 2,
    }
    with pytest.raises(SpecError, match="size"):
        entry_fields({}, {"prompt": "x", "size": "big"})


def test_a_batch_file_that_cannot_be_used_is_one_error(tmp_path):
    (tmp_path / "a.yaml").write_text("renders: []\n")
    with pytest.raises(BatchFileError, match="non-empty list"):
        load_batch(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("render: [{prompt: x}]\n")
    with pytest.raises(BatchFileError, match="unknown top-level key 'render'"):
        load_batch(tmp_path / "b.yaml")
    out = subprocess.run(
        [sys.executable, "-m", "supergen_dask.cli", "batch", str(tmp_path / "b.yaml")],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.startswith("error:") and len(out.stderr.splitlines()) == 1


def test_readme_batch_file_is_valid(tmp_path):
    import re

    readme = (REPO / "README.md").read_text()
    (text,) = re.findall(r"<!-- readme: batch -->\n```yaml\n(.*?)```", readme, re.S)
    (tmp_path / "nightly.yaml").write_text(text)
    defaults, entries, _ = load_batch(tmp_path / "nightly.yaml")
    resolved = resolve_entries(defaults, entries, tmp_path)
    assert [e.error for e in resolved] == [None] * 3
    assert [(e.plan.spec.width, e.plan.spec.height) for e in resolved] == [(192, 128), (128, 128), (192, 128)]
    assert resolved[2].plan.spec.output.crf == 12
    assert len({e.render_dir for e in resolved}) == 3
