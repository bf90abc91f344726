"""The GPU test modules' dask-cuda clusters: one per GPU count, started on a module's first use and
closed after its last test (each start costs seconds)."""

from __future__ import annotations

import contextlib

import pytest
from distributed import Client

import supergen_dask as sd
from supergen_dask.cluster import make_cluster

_CLIENTS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def gpu_clusters():
    """Import into a test module to give it its clusters (pytest runs one module's at a time)."""
    with contextlib.ExitStack() as stack:
        _CLIENTS["stack"] = stack
        yield
    _CLIENTS.clear()


def gpu_client(n_gpus: int) -> Client:
    """A client of this module's cluster of ``n_gpus`` dask-cuda workers."""
    if n_gpus not in _CLIENTS:
        stack = _CLIENTS["stack"]
        cluster = stack.enter_context(make_cluster(n_workers=n_gpus))
        _CLIENTS[n_gpus] = stack.enter_context(Client(cluster))
    client = _CLIENTS[n_gpus]
    assert len(client.scheduler_info()["workers"]) == n_gpus
    return client


def new_gpu_client(n_gpus: int) -> Client:
    """A client of a new cluster of ``n_gpus`` workers, made with the configuration in force now
    (not shared; closed with the module's clusters)."""
    stack = _CLIENTS["stack"]
    return stack.enter_context(Client(stack.enter_context(make_cluster(n_workers=n_gpus))))


def render_on(spec, out, n_gpus: int):
    return sd.render(spec, output_dir=out, client=gpu_client(n_gpus), progress=False)
