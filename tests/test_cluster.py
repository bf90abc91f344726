"""The cluster factory: CPU clusters advertise a GPU resource and listen on localhost only."""

from __future__ import annotations

import os

import psutil
import pytest
from distributed import Client

from supergen_dask.cluster import client_for, gpu_count, make_cluster


def _listening(pids) -> set[str]:
    out = set()
    for pid in pids:
        for conn in psutil.Process(pid).net_connections():
            if conn.status == psutil.CONN_LISTEN:
                out.add(conn.laddr.ip)
    return out


@pytest.mark.parametrize("processes", [False, True])
def test_cpu_cluster_advertises_gpu_and_binds_localhost(processes):
    with make_cluster(n_workers=2, processes=processes, gpu=False) as cluster, Client(cluster) as client:
        info = client.scheduler_info()["workers"]
        assert len(info) == 2
        assert all(w["resources"] == {"GPU": 1} for w in info.values())
        assert client.submit(lambda: 41 + 1, resources={"GPU": 1}).result() == 42
        pids = {os.getpid()} | set(client.run(os.getpid).values())
        assert _listening(pids) <= {"127.0.0.1"}


def test_asking_for_gpus_without_any_is_a_clear_error():
    if gpu_count():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        make_cluster(gpu=True)


def test_workers_per_gpu_must_be_positive():
    with pytest.raises(ValueError, match="workers_per_gpu"):
        make_cluster(workers_per_gpu=0)


def test_client_for_reuses_a_given_client():
    with make_cluster(n_workers=1, processes=False, gpu=False) as cluster, Client(cluster) as client:
        with client_for(client) as same:
            assert same is client


def test_packages_import_beside_same_named_folders(tmp_path):
    """Dask workers put their local directory (which holds a spill folder named ``storage``) first on
    ``sys.path``, and users have folders called ``pipelines``: neither may shadow our packages."""
    import subprocess
    import sys

    (tmp_path / "storage").mkdir()
    (tmp_path / "pipelines").mkdir()
    code = "import supergen_dask, storage, pipelines; print(storage.__file__, pipelines.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "None" not in done.stdout


def test_workers_started_outside_the_repository_import_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # like a notebook kernel started elsewhere
    with make_cluster(n_workers=1, processes=True, gpu=False) as cluster, Client(cluster) as client:

        def where():
            import storage

            return storage.__file__

        assert client.submit(where).result().endswith("storage/__init__.py")


def test_dask_cuda_workers_compute_on_their_own_card(monkeypatch):
    """dask-cuda gives worker 1 of a 2-GPU machine ``CUDA_VISIBLE_DEVICES="1,0"``: its own card is
    ``cuda:0``. Selecting ``name % device_count`` (device 1) would put it on physical GPU 0, beside
    worker 0, and leave the second card idle."""
    import distributed
    import torch

    from supergen_dask import worker_models

    chosen = []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: chosen[-1] if chosen else 0)
    monkeypatch.setattr(distributed, "get_worker", lambda: type("W", (), {"name": 1})())
    monkeypatch.setattr(worker_models, "_THREADS_SET", False)
    assert worker_models.worker_device() == "cuda"
    assert torch.cuda.current_device() == 0, f"worker 1 picked device {chosen}"


def test_workers_sharing_cards_are_pinned_round_robin():
    from supergen_dask.cluster import _shared_gpu_cluster, visible_devices_for

    assert visible_devices_for(0, 2) == "0,1" and visible_devices_for(1, 2) == "1,0"
    assert visible_devices_for(5, 4) == "1,2,3,0"
    web = {"dashboard_address": None, "worker_dashboard_address": "127.0.0.1:0"}
    with _shared_gpu_cluster(3, 2, web) as cluster, Client(cluster) as client:
        seen = client.run(lambda dask_worker: (dask_worker.name, os.environ["CUDA_VISIBLE_DEVICES"]))
        assert sorted(seen.values()) == [(0, "0,1"), (1, "1,0"), (2, "0,1")]
        assert all(w["resources"] == {"GPU": 1} for w in client.scheduler_info()["workers"].values())


def test_gpu_workers_get_a_thread_per_segment_encode_the_host_can_run(monkeypatch):
    """``threads-per-gpu-worker: auto``: every mp4 segment of a render runs at once after the
    last decode, on a host of many cores as on one of few (never fewer than 4 threads)."""
    import dask.config
    import dask.system

    from supergen_dask.cluster import gpu_worker_threads

    auto = {"supergen.cluster.threads-per-gpu-worker": "auto", "supergen.cluster.gpu-slots": 1}
    with dask.config.set(auto):
        for cores, workers, threads in [(64, 4, 8), (64, 1, 32), (16, 1, 8), (2, 1, 4), (32, 8, 4)]:
            monkeypatch.setattr(dask.system, "cpu_count", lambda cores=cores: cores)
            assert gpu_worker_threads(workers) == (threads, 1)
        with dask.config.set({"supergen.encode.threads": 4}):
            assert gpu_worker_threads(1) == (8, 1)  # 32 cores over 4-thread segments
        with dask.config.set({"supergen.cluster.threads-per-gpu-worker": 6}):
            assert gpu_worker_threads(4) == (6, 1)
        with dask.config.set({"supergen.cluster.threads-per-gpu-worker": "many"}):
            with pytest.raises(ValueError, match="threads-per-gpu-worker must be an integer >= 1"):
                gpu_worker_threads(1)
