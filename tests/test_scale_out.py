"""Scale-out by address: a `dask scheduler` and `dask worker --resources GPU=1` processes started
here, a render connected by address with a driver-side setting changed -> the same bytes as a
thread cluster's render (everything that decides the output is in the plan, never read from a
worker's own settings)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import pytest
from conftest import assert_renders_identical, local_client, tiny_spec
from distributed import Client

import supergen_dask as sd

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# not the defaults (2 threads, auto-sized segments): would change the mp4 bytes if a worker used its own
CHANGED = {"supergen.encode.threads": 1, "supergen.encode.segment-frames": 4}


@contextlib.contextmanager
def address_cluster(tmp: Path, n_workers: int = 2):
    """A scheduler and ``n_workers`` single-threaded worker processes advertising ``GPU=1``, as
    a team would start them on their machines; yields the scheduler's address."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    info = tmp / "scheduler.json"
    common = ["--no-dashboard", "--host", "127.0.0.1"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dask",
                "scheduler",
                "--port",
                "0",
                "--scheduler-file",
                str(info),
                *common,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        deadline = time.time() + 60
        while not info.exists():
            assert procs[0].poll() is None and time.time() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        for i in range(n_workers):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dask",
                        "worker",
                        address,
                        "--resources",
                        "GPU=1",
                        "--nthreads",
                        "1",
                        "--name",
                        f"w{i}",
                        "--local-directory",
                        str(tmp / f"w{i}"),
                        *common,
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_render_by_address_on_worker_processes_equals_thread_cluster(tmp_path):
    spec = tiny_spec(prompt="a blue square moving left", num_inference_steps=5, refine_steps=3, num_frames=9)
    with dask.config.set(CHANGED):
        plan = sd.plan_render(spec)
        assert (plan.encode_threads, plan.encode_segment_frames) == (1, 4)
        with address_cluster(tmp_path) as address:
            # the thread cluster's render runs while the worker processes start
            with local_client(2, processes=False) as threads:
                sd.render(spec, output_dir=tmp_path / "threads", client=threads, progress=False)
            with Client(address, timeout=30) as client:
                client.wait_for_workers(2, timeout=120)
                workers = client.scheduler_info()["workers"]
                assert all(w["resources"] == {"GPU": 1} for w in workers.values())

                def _worker_setting():  # nested: pickled by value, the workers cannot import this file
                    import dask.config as cfg

                    import supergen_dask.config  # noqa: F401 - registers the supergen defaults

                    return cfg.get("supergen.encode.threads"), cfg.get("supergen.encode.segment-frames")

                # the driver's setting did not reach the worker processes...
                assert set(client.run(_worker_setting).values()) == {(2, "auto")}
                pids = set(client.run(os.getpid).values())
                assert os.getpid() not in pids and len(pids) == 2
                result = sd.render(spec, output_dir=tmp_path / "address", client=client, progress=False)
    # ...and the bytes are the same: both ran the plan's settings
    assert len(result.plan.encode_segments()) == 3
    assert_renders_identical(tmp_path / "threads", tmp_path / "address")
