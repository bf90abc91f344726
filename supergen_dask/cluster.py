"""One cluster factory: an existing scheduler, dask-cuda's ``LocalCUDACluster`` when GPUs exist,
or a CPU ``LocalCluster`` that advertises the same ``GPU`` resource so one code path schedules both.

Settings come from ``dask.config`` under ``supergen.cluster`` (``DASK_SUPERGEN__CLUSTER__...``).
Local schedulers and dashboards bind to localhost.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator

import dask.system
import dask.utils
from distributed import Client, LocalCluster

from supergen_dask import config

__all__ = [
    "ClusterError",
    "gpu_count",
    "check_cluster_options",
    "make_cluster",
    "client_for",
    "visible_devices_for",
    "gpu_worker_threads",
]


class ClusterError(OSError):
    """The cluster asked for cannot be had: bad options, or a scheduler that does not answer."""


def check_cluster_options(n_workers: int | None = None, workers_per_gpu: int | None = None) -> None:
    """Raise ``ValueError`` naming the option when a local cluster could never start a worker
    (zero workers would wait for one forever)."""
    for name, value in (("n_workers", n_workers), ("workers_per_gpu", workers_per_gpu)):
        if value is not None:
            _check_count(name, value)


def _check_count(name: str, value) -> int:
    """``value`` if it is an integer >= 1, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def connect(address: str, timeout: float | None = None) -> Client:
    """A client of the scheduler at ``address``; ``ClusterError`` naming it if it does not answer
    within ``timeout`` seconds (default ``supergen.cluster.connect-timeout``)."""
    if timeout is None:
        timeout = dask.utils.parse_timedelta(config.get("cluster.connect-timeout") or "10s")
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        waited = isinstance(exc, TimeoutError) or "Timed out" in str(exc)
        why = f"no answer within {timeout:g} s (supergen.cluster.connect-timeout)" if waited else str(exc)
        raise ClusterError(f"cannot connect to the Dask scheduler at {address}: {why}") from None


def gpu_count() -> int:
    """GPUs visible to this process (0 without CUDA), without initialising dask-cuda."""
    if config.get("device") == "cpu":
        return 0
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def make_cluster(
    n_workers: int | None = None,
    processes: bool | None = None,
    gpu: bool | None = None,
    workers_per_gpu: int | None = None,
):
    """A local cluster whose every worker holds one ``GPU`` resource slot.

    With GPUs (``gpu`` None = detect): one worker process per GPU via dask-cuda (the ``[gpu]``
    extra), imported only here; or, with ``workers_per_gpu`` > 1, that many plain worker processes
    per GPU, each pinned to its card through ``CUDA_VISIBLE_DEVICES``. Without GPUs:
    ``n_workers`` single-threaded CPU workers.
    """
    check_cluster_options(n_workers, workers_per_gpu)
    dashboard = config.get("cluster.dashboard-address")
    # Every HTTP endpoint on localhost: the scheduler serves health routes even without a
    # dashboard (on all interfaces, port 8787, unless told otherwise), and so do workers.
    web = {
        "dashboard_address": dashboard,
        "worker_dashboard_address": "127.0.0.1:0",
        "scheduler_kwargs": {} if dashboard else {"dashboard": False, "dashboard_address": "127.0.0.1:0"},
    }
    n_gpus = gpu_count() if gpu is None or gpu else 0
    if gpu and not n_gpus:
        raise RuntimeError("a GPU cluster was asked for but this machine has no CUDA device")
    share = int(
        workers_per_gpu if workers_per_gpu is not None else config.get("cluster.workers-per-gpu") or 1
    )
    if share < 1:
        raise ValueError(f"workers_per_gpu must be >= 1, got {share}")
    if n_gpus and share > 1:
        return _shared_gpu_cluster(n_workers or n_gpus * share, n_gpus, web)
    if n_gpus:
        n_workers = n_workers or config.get("cluster.n-workers") or n_gpus
        threads, slots = gpu_worker_threads(n_workers)
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:  # pragma: no cover - GPU path
            raise RuntimeError("GPU workers need dask-cuda: pip install 'supergen-dask[gpu]'") from exc
        return LocalCUDACluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            resources={"GPU": slots},
            device_memory_limit=0,
            memory_limit=0,
            host="127.0.0.1",
            **web,
        )
    if n_workers is None:
        n_workers = config.get("cluster.n-workers") or max(1, min(2, os.cpu_count() or 1))
    if processes is None:
        processes = bool(config.get("cluster.processes"))
    # Threads talk in-process; worker processes bind to localhost only.
    network = {"host": "127.0.0.1"} if processes else {}
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=processes,
        resources={"GPU": 1},
        **web,
        **network,
    )


MIN_GPU_WORKER_THREADS = 4
"""Threads of a dask-cuda worker with ``threads-per-gpu-worker: auto`` on a host of few cores."""


def gpu_worker_threads(n_workers: int = 1) -> tuple[int, int]:
    """``(threads, GPU slots)`` of each of ``n_workers`` dask-cuda workers on this host
    (``supergen.cluster.threads-per-gpu-worker`` and ``gpu-slots``); ``ValueError`` naming the
    setting when they cannot work together.

    ``auto`` threads: the host's cores shared among the workers, one thread per ``encode.threads``
    cores (an mp4 segment's x264 threads), at least ``MIN_GPU_WORKER_THREADS``. The segments are
    the most CPU tasks that are ready at once (all of them, after the last decode); a worker's
    threads beyond its GPU slots only ever run CPU tasks, so spare ones cost nothing.
    """

    def setting(name: str) -> int:
        value = config.get(f"cluster.{name}")
        return _check_count(f"supergen.cluster.{name}", 1 if value is None else value)

    if config.get("cluster.threads-per-gpu-worker") == "auto":
        per_task = max(1, int(config.get("encode.threads") or 1))
        threads = max(MIN_GPU_WORKER_THREADS, dask.system.cpu_count() // (per_task * max(1, n_workers)))
    else:
        threads = setting("threads-per-gpu-worker")
    slots = setting("gpu-slots")
    if slots > threads:
        raise ValueError(
            f"supergen.cluster.gpu-slots ({slots}) is more than threads-per-gpu-worker ({threads}): "
            "each tile task a worker runs at once needs a thread"
        )
    return threads, slots


def visible_devices_for(index: int, n_gpus: int) -> str:
    """``CUDA_VISIBLE_DEVICES`` of the worker pinned to card ``index``: every card, rotated so that
    its own comes first (dask-cuda's convention), so ``cuda:0`` inside the worker is that card."""
    return ",".join(str((index + i) % n_gpus) for i in range(n_gpus))


def _shared_gpu_cluster(n_workers: int, n_gpus: int, web: dict) -> LocalCluster:
    """``n_workers`` single-threaded worker processes spread round-robin over ``n_gpus`` cards,
    each pinned through its own ``CUDA_VISIBLE_DEVICES`` (set by its nanny before CUDA starts)."""
    cluster = LocalCluster(
        n_workers=0, threads_per_worker=1, processes=True, resources={"GPU": 1}, host="127.0.0.1", **web
    )
    for i in range(n_workers):
        spec = copy.deepcopy(cluster.new_spec)
        options = spec.setdefault("options", {})
        options["env"] = {**options.get("env", {}), "CUDA_VISIBLE_DEVICES": visible_devices_for(i, n_gpus)}
        options["name"] = i
        cluster.worker_spec[i] = spec
    cluster.scale(n_workers)  # starts the specs above
    cluster.wait_for_workers(n_workers)
    return cluster


@contextlib.contextmanager
def client_for(
    client: Client | None = None,
    address: str | None = None,
    n_workers: int | None = None,
    processes: bool | None = None,
    workers_per_gpu: int | None = None,
) -> Iterator[Client]:
    """Yield ``client`` if given, else connect to ``address`` (or ``supergen.cluster.address``),
    else start a local cluster for the duration of the block."""
    if client is not None:
        yield client
        return
    address = address or config.get("cluster.address")
    if address:
        with connect(address) as c:
            yield c
        return
    check_cluster_options(n_workers, workers_per_gpu)
    with (
        make_cluster(n_workers=n_workers, processes=processes, workers_per_gpu=workers_per_gpu) as cluster,
        Client(cluster) as c,
    ):
        yield c
