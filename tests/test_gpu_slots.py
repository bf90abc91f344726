"""Tile tasks sharing a worker's device: several run at once (``GPU`` slots), their model calls
take turns (``worker_models.device_turn``), and the bytes do not change."""

from __future__ import annotations

import dask.config
import numpy as np
import pytest
from conftest import assert_renders_identical, local_client, tiny_spec
from distributed import Client, LocalCluster

import supergen_dask as sd
from storage import RenderStore
from supergen_dask.cluster import gpu_worker_threads

# 4x2 tiles of the tiny Wan (6 steps, k = 4): 32 refinement tile tasks, several ready at once
SPEC = dict(height=256, width=128)


def _intervals(stats) -> dict[str, np.ndarray]:
    """Each finished tile's reads, turn (queueing its model call and the copies of its results to
    the host) and writes, as ``(n, 2)`` wall-clock intervals (the turn's exactly; the others from
    their durations; writes begin when the results have landed, ``forward_seconds`` after the
    turn began)."""
    fields = ("turn_started", "wait_seconds", "turn_seconds", "forward_seconds", "write_seconds")
    f = {k: stats[k].ravel() for k in fields}
    turn0 = f["turn_started"]
    read1 = turn0 - f["wait_seconds"]
    write0 = turn0 + f["forward_seconds"]
    assert (f["turn_seconds"] <= f["forward_seconds"]).all()
    return {
        "read": np.stack([stats["started"].ravel(), read1], 1),
        "turn": np.stack([turn0, turn0 + f["turn_seconds"]], 1),
        "write": np.stack([write0, write0 + f["write_seconds"]], 1),
    }


def _overlaps(a: np.ndarray, b: np.ndarray, slack: float = 0.0) -> int:
    """Pairs ``(i, j)``, ``i != j``, whose intervals overlap by more than ``slack`` seconds."""
    lo = np.maximum(a[:, None, 0], b[None, :, 0])
    hi = np.minimum(a[:, None, 1], b[None, :, 1])
    over = hi - lo > slack
    if a is b:
        np.fill_diagonal(over, False)
    return int(over.sum())


def test_two_slots_overlap_io_with_turns_and_give_the_same_bytes(tmp_path):
    spec = tiny_spec(**SPEC)
    with local_client(1) as c:
        one = sd.render(spec, output_dir=tmp_path / "one", client=c, progress=False)
    # one worker, two tile tasks at once (what `supergen.cluster.gpu-slots: 2` gives a GPU worker)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, resources={"GPU": 2}, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        two = sd.render(spec, output_dir=tmp_path / "two", client=c, progress=False)
    assert_renders_identical(one.render_dir, two.render_dir)

    stats = RenderStore.open(str(two.store_path), mode="r").tile_stats("refine")
    assert np.isfinite(stats["wait_seconds"]).all()
    iv = _intervals(stats)
    # turns never overlap (0.1 ms: wall-clock starts, perf-counter lengths), ...
    assert _overlaps(iv["turn"], iv["turn"], slack=1e-4) == 0
    # ... tasks did wait for them, and reads or writes ran during another tile's turn
    assert (stats["wait_seconds"] > 0).any()
    assert _overlaps(iv["read"], iv["turn"]) + _overlaps(iv["write"], iv["turn"]) > 0

    # one slot: a task never waits for the turn
    single = RenderStore.open(str(one.store_path), mode="r").tile_stats("refine")
    assert np.nanmax(single["wait_seconds"]) < 0.05


def test_the_step_after_the_turn_gives_the_same_bytes(tmp_path):
    """``supergen.worker.step-in-turn: false`` with three slots: the turn holds only the queueing
    of the model call, the scheduler step runs after it, and the bytes are one slot's."""
    spec = tiny_spec(**SPEC)
    with local_client(1) as c:
        one = sd.render(spec, output_dir=tmp_path / "one", client=c, progress=False)
    with (
        dask.config.set({"supergen.worker.step-in-turn": False}),
        LocalCluster(
            n_workers=1, threads_per_worker=3, processes=False, resources={"GPU": 3}, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        after = sd.render(spec, output_dir=tmp_path / "after", client=c, progress=False)
        (settings,) = (
            RenderStore.open(str(after.store_path), mode="r")
            .attrs["sessions"][-1]["worker_settings"]
            .values()
        )
    assert settings["step_in_turn"] is False and settings["gpu_slots"] == 3
    assert_renders_identical(one.render_dir, after.render_dir)
    iv = _intervals(RenderStore.open(str(after.store_path), mode="r").tile_stats("refine"))
    assert _overlaps(iv["turn"], iv["turn"], slack=1e-4) == 0


def test_gpu_slots_setting_is_checked():
    with dask.config.set({"supergen.cluster.gpu-slots": 2, "supergen.cluster.threads-per-gpu-worker": 4}):
        assert gpu_worker_threads() == (4, 2)
    with dask.config.set({"supergen.cluster.gpu-slots": 3, "supergen.cluster.threads-per-gpu-worker": 2}):
        with pytest.raises(ValueError, match="gpu-slots \\(3\\) is more than threads-per-gpu-worker \\(2\\)"):
            gpu_worker_threads()
    for bad in (0, "two", 1.5, True):
        with dask.config.set({"supergen.cluster.gpu-slots": bad}):
            with pytest.raises(ValueError, match="supergen.cluster.gpu-slots must be an integer >= 1"):
                gpu_worker_threads()


def test_a_session_records_how_its_workers_run_models(tmp_path, client):
    result = sd.render(tiny_spec(), output_dir=tmp_path / "r", client=client, progress=False)
    session = RenderStore.open(str(result.store_path), mode="r").attrs["sessions"][-1]
    settings = session["worker_settings"]
    assert sorted(settings) == sorted(client.scheduler_info()["workers"])
    for s in settings.values():
        assert s == {
            "gpu_slots": 1,
            "offload": "none",
            "attention": None,
            "compile": False,
            "keep_text_encoder": False,
            "step_in_turn": True,
        }


def test_tile_homes_rotate_and_guidance_branches_prefer_two_workers():
    """A 5x5 grid over 4 workers leaves one tile over per step; the preferred worker of each
    tile (a loose placement, graph._Graph._submit) moves by one grid per step, so over the 4
    steps every worker is preferred for 25 of the 100 tile steps instead of one worker for 28
    (measured on a 4-worker CPU cluster with a model that sleeps 1 s per call: stage 2 in 26.9 s
    instead of 27.6 s, against 25 s of model calls per worker)."""
    from supergen_dask.graph import _Graph

    plan = sd.plan_render(tiny_spec(height=320, width=320, num_inference_steps=5, refine_steps=4))
    st = plan.refine
    assert (st.grid.rows, st.grid.cols, len(st.steps)) == (5, 5, 4)
    workers = [f"tcp://w{i}" for i in range(4)]
    preferred: list[tuple[str, str]] = []

    class FakeClient:
        def scheduler_info(self):
            return {"workers": {w: {} for w in workers}}

        def submit(self, fn, *args, key, workers=None, **kw):
            preferred.append((key, workers[0] if workers else None))
            return object()

    class FakeStore:
        location, instance = "nowhere", "0"

        def done_mask(self, name):
            s = plan.stage(name)
            return np.zeros((len(s.steps), s.grid.rows, s.grid.cols), dtype=bool)

    graph = _Graph(FakeClient(), plan, FakeStore(), 0, None)
    graph.stage("refine", None, None)
    assert len(preferred) == 100
    counts = {w: sum(1 for _, p in preferred if p == w) for w in workers}
    assert counts == dict.fromkeys(workers, 25)
    for step in range(4):  # and within each step, 7 / 6 / 6 / 6
        per = sorted(sum(1 for _, p in preferred[step * 25 : (step + 1) * 25] if p == w) for w in workers)
        assert per == [6, 6, 6, 7]
    # the sketch's guidance branches (one task each) prefer two different workers, so two GPU
    # slots on one worker do not put both on one card
    sketch = plan.sketch
    preferred.clear()
    graph.stage("sketch", None, None)
    branches = [(k, w) for k, w in preferred if k[0].startswith("predict-")]
    assert len(branches) == 2 * len(sketch.steps)
    assert {(k[-1], w) for k, w in branches} == {(0, workers[0]), (1, workers[1])}
