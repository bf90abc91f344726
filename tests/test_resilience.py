"""Killed jobs and killed workers: the render finishes and the output does not change."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_renders_identical, local_client, tiny_spec

import supergen_dask as sd
from storage import RenderStore
from supergen_dask import worker_models

pytestmark = pytest.mark.slow

# Big enough (12 sketch + 10 x 9 tile tasks) that a kill lands inside stage 2.
SPEC = tiny_spec(
    prompt="a blue square moving left", height=192, width=192, num_inference_steps=12, refine_steps=10, seed=3
)
CLI_ARGS = [
    "--model",
    "tiny-random-wan",
    "--prompt",
    SPEC.prompt,
    "--height",
    "192",
    "--width",
    "192",
    "--num-frames",
    "9",
    "--num-inference-steps",
    "12",
    "--refine-steps",
    "10",
    "--guidance-scale",
    "5.0",
    "--seed",
    "3",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "r"
    with local_client(2) as c:
        sd.render(SPEC, output_dir=out, client=c, progress=False)
    return out


def _refine_done(store_path: Path) -> tuple[int, int]:
    try:
        mask = RenderStore.open(str(store_path), mode="r").done_mask("refine")
    except (FileNotFoundError, ValueError, KeyError):
        return 0, 1
    return int(mask.sum()), mask.size


def _wait_for_stage2(store_path: Path, fraction: float, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, total = _refine_done(store_path)
        if done >= fraction * total:
            return
        time.sleep(0.02)
    raise TimeoutError("stage 2 did not start in time")


def test_killed_job_resumes_bit_identical_without_recomputing(tmp_path, reference):
    out = tmp_path / "r"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supergen_dask.cli",
            "render",
            *CLI_ARGS,
            "--output-dir",
            str(out),
            "--workers",
            "2",
            "--threads",  # the driver and its workers are one process: one SIGKILL stops them all
            "--no-progress",
        ],
        start_new_session=True,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_stage2(out / "render.zarr", 0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-stage-2
        proc.wait()
    store = RenderStore.open(str(out / "render.zarr"), mode="r")
    before = store.done_mask("refine")
    before_stats = store.tile_stats("refine")
    assert 0 < before.sum() < before.size, "the kill must land inside stage 2"
    assert store.attrs["sessions"][-1]["status"] == "running"  # killed, never finished

    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "supergen_dask.cli",
            "resume",
            str(out),
            "--workers",
            "2",
            "--threads",
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "video:" in resumed.stdout

    store = RenderStore.open(str(out / "render.zarr"), mode="r")
    after = store.tile_stats("refine")
    assert store.done_mask("refine").all()
    # tiles finished before the kill were not recomputed: still stamped session 1, same timings
    assert np.all(after["session"][before] == 1)
    np.testing.assert_array_equal(after["seconds"][before], before_stats["seconds"][before])
    assert np.all(after["session"][~before] == 2)
    assert store.attrs["sessions"][-1]["status"] == "finished"
    assert_renders_identical(reference, out)


def test_killed_worker_does_not_fail_or_change_the_render(tmp_path, reference):
    out = tmp_path / "r"
    with local_client(2, processes=True) as client:
        pids = client.run(os.getpid)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(sd.render, SPEC, output_dir=out, client=client, progress=False)
            _wait_for_stage2(out / "render.zarr", 0.2)
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            result = fut.result(timeout=600)
        loads = client.run(worker_models.load_count)
        pids_after = client.run(os.getpid)
    assert result.video_path.exists()
    assert victim not in pids_after.values()  # the nanny replaced the killed worker
    # one model per worker process, loaded once (a per-task reload would count in the hundreds)
    assert all(n <= 1 for n in loads.values()), loads
    assert_renders_identical(reference, out)
