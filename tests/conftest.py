"""Shared fixtures: tiny specs, local clusters, and comparisons of whole renders."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client

from supergen_dask import RenderSpec, ShiftSettings
from supergen_dask.cluster import make_cluster

TINY = dict(model="tiny-random-wan", num_frames=9, guidance_scale=5.0, seed=7)

LONGEST_FIRST = (
    "test_readme.py",
    "test_resilience.py",
    "test_notebooks.py",
    "test_cache.py",
    "test_batch.py",
)
"""Test files of two minutes or so each: they start first. Files are the unit of ``--dist loadfile``,
and in name order three of them came last, leaving one worker to run them while the other idled."""


def load_script(name: str):
    """``scripts/<name>.py`` as a module (scripts are not a package), registered under ``name``."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def tiny_spec(**overrides) -> RenderSpec:
    """A render that takes seconds on a CPU: 2x2 tiles of the tiny random Wan, 6 steps, k=4."""
    fields = dict(
        TINY, prompt="a red circle moving right", height=128, width=128, num_inference_steps=6, refine_steps=4
    )
    fields.update(overrides)
    return RenderSpec(**fields)


@contextlib.contextmanager
def local_client(n_workers: int = 2, processes: bool = False):
    """A local cluster from the project's own factory (CPU, ``GPU`` resource advertised)."""
    with (
        make_cluster(n_workers=n_workers, processes=processes, gpu=False) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def client():
    """A shared in-process cluster of two single-threaded workers."""
    with local_client(2) as c:
        yield c


def _executing(dask_worker) -> int:
    return dask_worker.state.executing_count


def wait_idle(client: Client, timeout: float = 120) -> None:
    """Until no worker thread runs a task, counting tasks a stopped render cancelled but whose
    threads are still finishing (Dask cannot interrupt them; they may still write to the store)."""
    deadline = time.time() + timeout
    while sum(client.run(_executing).values()):
        if time.time() > deadline:
            raise TimeoutError("the workers are still running tasks")
        time.sleep(0.05)


def store_arrays(store_path: Path) -> dict[str, np.ndarray]:
    """Every data array of a render store (not the timing stats, which differ run to run)."""
    root = zarr.open_group(str(store_path), mode="r")
    out = {}
    for path, arr in root.arrays():
        out[path] = arr[...]
    for name, group in root.groups():
        for path, arr in group.arrays():
            if path in ("tile_stats",):
                continue
            out[f"{name}/{path}"] = arr[...]
    return out


def array_differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, tuple[float, int]]:
    """For each floating-point array of two renders' ``store_arrays`` that differs: the largest
    absolute difference and the first index along its first axis (a step, for per-step arrays)
    where it differs. Cells that are NaN on either side (never written) are not compared."""
    out = {}
    for k in sorted(a):
        if a[k].dtype.kind != "f":
            continue
        d = np.nan_to_num(np.abs(a[k].astype(np.float64) - b[k]), nan=0.0)
        if d.size and d.max() > 0:
            per = d.reshape(len(d), -1).max(axis=1) if d.ndim else d.reshape(1)
            out[k] = (float(d.max()), int(np.flatnonzero(per)[0]))
    return out


def assert_renders_identical(a: Path, b: Path) -> None:
    """Bit-identical latents, scheduler state, pixels and video bytes."""
    xa, xb = store_arrays(a / "render.zarr"), store_arrays(b / "render.zarr")
    assert sorted(xa) == sorted(xb)
    for name in xa:
        assert np.array_equal(xa[name], xb[name], equal_nan=True), f"{name} differs"
    assert (a / "video.mp4").read_bytes() == (b / "video.mp4").read_bytes(), "video bytes differ"


__all__ = [
    "TINY",
    "tiny_spec",
    "local_client",
    "wait_idle",
    "store_arrays",
    "assert_renders_identical",
    "ShiftSettings",
]
