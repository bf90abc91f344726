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
