"""The region-aware residual cache: the decision rule, hits at shifted windows, determinism, and
cache-guided balancing by Dask's own scheduling."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from conftest import assert_renders_identical, local_client, tiny_spec

import supergen_dask as sd
from storage import RenderStore
from supergen_dask import cache as rc
from supergen_dask.spec import CacheSettings, SpecError

POLICY = rc.CachePolicy(threshold=0.3, warmup=2)
# the tiny random Wan changes its prediction by ~1.5x per step (no trained smoothness): a tau
# that skips about half of its tile steps
TAU = 4.0


# -- the rule -------------------------------------------------------------------------------------
def test_rule_on_a_constructed_sequence():
    n = 10
    state = rc.TileCacheState()
    # warm-up: always computed, whatever the change
    for i in range(2):
        d = rc.decide(POLICY, i, n, state, delta_in=0.0, out_mag=1.0, tau=0.3)
        assert d.compute and d.acc == 0.0
    state = rc.TileCacheState(k=2.0)
    seq = []
    for i, delta in zip(range(2, 9), [0.05, 0.05, 0.05, 0.01, 0.2, 0.01, 0.01], strict=True):
        d = rc.decide(POLICY, i, n, state, delta_in=delta, out_mag=1.0, tau=0.3)
        seq.append((d.compute, round(d.acc, 6), d.skips))
        state = rc.TileCacheState(k=d.k, acc=d.acc, skips=d.skips)
    # change = k * delta / |o| = 2 * delta: 0.1, 0.1, 0.1 -> acc 0.1, 0.2, 0.3 (not < 0.3: compute)
    assert seq == [
        (False, 0.1, 1),
        (False, 0.2, 2),
        (True, 0.0, 0),
        (False, 0.02, 1),
        (True, 0.0, 0),  # 0.02 + 0.4 >= 0.3
        (False, 0.02, 1),
        (False, 0.04, 2),
    ]
    # the last step always computes, however small the change
    assert rc.decide(POLICY, n - 1, n, state, 0.0, 1.0, 0.3).compute


def test_gain_is_held_through_a_run_of_skips_and_a_cap_ends_it():
    capped = rc.CachePolicy(threshold=10.0, warmup=2, max_skips=3)
    state = rc.TileCacheState(k=0.7)
    runs = []
    for i in range(2, 12):
        d = rc.decide(capped, i, 20, state, 0.01, 1.0, 10.0)
        runs.append(d.compute)
        assert d.k == 0.7  # never collapses to 1 (the public code's defect)
        state = rc.TileCacheState(k=d.k, acc=d.acc, skips=d.skips)
    assert runs == [False, False, False, True] * 2 + [False, False]


def test_no_gain_yet_or_a_zero_prediction_computes():
    assert rc.decide(POLICY, 5, 10, rc.TileCacheState(), 0.0, 1.0, 0.3).compute
    assert rc.decide(POLICY, 5, 10, rc.TileCacheState(k=1.0), 0.0, 0.0, 0.3).compute
    x0, x1 = torch.zeros(4), torch.ones(4)
    assert rc.gain(2 * x1, x0, x1, x0) == pytest.approx(2.0)
    assert math.isnan(rc.gain(x1, x0, x1, x1))
    s, xc, oc = torch.full((3,), 2.0), torch.full((3,), 1.0), torch.full((3,), 1.5)
    assert torch.equal(rc.reuse(s, xc, oc), torch.full((3,), 2.5))


def test_region_scales_rank_by_variability_in_either_direction():
    m = np.zeros((3, 2, 2))
    m[:, 0, 1] = [1.0, 2.0, 3.0]  # most variable
    m[:, 1, 0] = [1.0, 1.5, 1.0]  # second
    var = rc.region_scales(m, alpha=0.5, direction="variable")
    assert var.tolist() == [[1.0, 1.5], [1.25, 1.0]]
    static = rc.region_scales(m, alpha=0.5, direction="static")
    assert static.tolist() == [[1.5, 1.0], [1.0, 1.25]]  # ties (0, 0) and (1, 1): lower index first
    with pytest.raises(ValueError, match="steps >= 2"):
        rc.region_scales(m[:1], 0.5)


def test_the_model_says_whether_the_cache_is_on_when_the_spec_does_not(capsys):
    from pipelines import model_info
    from supergen_dask.cli import main

    toy = model_info("toy-wan")
    assert toy.cache_enabled and toy.cache_threshold == 0.3  # measured: reports/cache-sweep.md
    on = sd.plan_render(sd.RenderSpec(prompt="a red circle moving right"))
    assert on.cache is not None and on.cache.threshold == 0.3
    assert on.spec.cache.enabled is True  # written into the resolved spec: part of the hash
    off = sd.plan_render(
        sd.RenderSpec(prompt="a red circle moving right", cache=CacheSettings(enabled=False))
    )
    assert off.cache is None and off.token != on.token
    assert sd.plan_render(tiny_spec()).cache is None  # no sweep on that model: off
    # a spec file may leave it open (null) or say so
    assert sd.RenderSpec.from_dict({"prompt": "x", "cache": {"enabled": None}}).resolved().cache.enabled
    with pytest.raises(SpecError, match="cache.enabled"):
        sd.plan_render(sd.RenderSpec(prompt="x", cache=CacheSettings(enabled="yes")))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "toy-wan: native 64x64, 9 frames, cache on (tau 0.3)" in out
    assert "tiny-random-wan: native 64x64, 9 frames, cache off (tau 0.2)" in out


def test_update_points_and_which_ranking_applies():
    p = rc.CachePolicy(threshold=0.1, warmup=2, interval=5)
    assert rc.update_points(p, 20) == (4, 9, 14)
    assert [rc.scale_index(p, 20, i) for i in (5, 6, 10, 11, 16, 19)] == [None, 0, 0, 1, 2, 2]


def test_spec_resolves_the_family_threshold_and_warmup():
    plan = sd.plan_render(
        tiny_spec(num_inference_steps=30, refine_steps=25, cache=CacheSettings(enabled=True))
    )
    assert plan.cache.threshold == 0.2 and plan.cache.warmup == 3
    assert plan.spec.cache.threshold == 0.2  # resolved into the spec: part of the render's hash
    assert "cache on: tau 0.2" in plan.summary()
    assert sd.RenderPlan.from_dict(plan.to_dict()).cache == plan.cache
    off = sd.plan_render(tiny_spec())
    assert off.cache is None and off.token != plan.token
    for bad in (dict(threshold=-1.0), dict(region_direction="up"), dict(warmup_steps=1), dict(max_skips=0)):
        with pytest.raises(SpecError, match="cache"):
            sd.plan_render(tiny_spec(cache=CacheSettings(enabled=True, **bad)))


# -- renders --------------------------------------------------------------------------------------
# 2 x 3 tiles of the tiny random Wan, 12 refinement steps: enough for skips and two rankings (each
# of a 3 x 3 grid's decode regions and upscale windows took the whole canvas: 2.5x the time)
CACHED = dict(height=128, width=192, num_inference_steps=14, refine_steps=12)


# every step and its history kept (retention would free them once read): these tests inspect them
KEEP_ALL = sd.OutputSettings(keep_every=1, keep_history=True)


def _cached_spec(tau: float, **kw):
    return tiny_spec(**CACHED, output=KEEP_ALL, cache=CacheSettings(enabled=True, threshold=tau, **kw))


@pytest.fixture(scope="module")
def cached_render(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "r"
    with local_client(2) as c:
        result = sd.render(_cached_spec(TAU), output_dir=out, client=c, progress=False)
    return result


def test_cache_skips_and_hits_reuse_the_residual_at_the_shifted_window(cached_render):
    plan = cached_render.plan
    store = RenderStore.open(str(cached_render.store_path), mode="r")
    rf = plan.refine
    computed = store.tile_stats("refine")["computed"]
    n = len(rf.steps)
    assert computed[: plan.cache.warmup].all() and computed[-1].all()
    skipped = int((computed == 0).sum())
    assert 0.2 < skipped / computed.size < 0.9, f"{skipped} of {computed.size} skipped"
    g = rf.grid
    hits = 0
    for i in range(1, n):
        for r in range(g.rows):
            for c in range(g.cols):
                key = sd.TileKey("refine", rf.steps[i], r, c)
                y0, x0 = rf.origin(key)
                now = store.read_region("refine", "cache", rf.steps[i], y0, x0, g.tile_h, g.tile_w)
                before = store.read_region("refine", "cache", rf.steps[i - 1], y0, x0, g.tile_h, g.tile_w)
                if computed[i, r, c] == 0:
                    # a hit carries the region's last computed input and prediction, read at its
                    # own (shifted) window of the previous step's canvas
                    np.testing.assert_array_equal(now[1:], before[1:])
                    hits += 1
                else:
                    np.testing.assert_array_equal(now[0], now[1])  # computed: x_computed is x
    assert hits == skipped
    summary = sd.graph.describe(cached_render.render_dir)["cache"]
    assert summary["skipped"] == skipped and summary["tile_steps"] == computed.size
    assert summary["estimated_stage2_speedup"] == pytest.approx(
        computed.size / (computed.size - skipped), abs=1e-3
    )
    session = store.attrs["sessions"][-1]
    assert session["cache"]["skipped"] == skipped


def test_gain_is_held_in_the_store_through_skips(cached_render):
    stats = RenderStore.open(str(cached_render.store_path), mode="r").tile_stats("refine")
    computed, k = stats["computed"], stats["cache_k"]
    held = 0
    for i in range(1, computed.shape[0]):
        run = (computed[i] == 0) & (computed[i - 1] == 0)  # inside a run of skips
        np.testing.assert_array_equal(k[i][run], k[i - 1][run])
        held += int(run.sum())
    decided = k[2:-1]  # forced steps (warm-up, last) record no decision
    assert held > 0 and np.isfinite(decided).all() and not np.any(decided == 1.0)


def test_cache_with_a_tiny_threshold_is_bit_identical_to_no_cache(tmp_path, client):
    off = sd.render(
        tiny_spec(**CACHED, output=KEEP_ALL), output_dir=tmp_path / "off", client=client, progress=False
    )
    on = sd.render(_cached_spec(1e-12), output_dir=tmp_path / "on", client=client, progress=False)
    assert RenderStore.open(str(on.store_path), mode="r").tile_stats("refine")["computed"].all()
    for step in on.plan.refine.steps:
        a = RenderStore.open(str(off.store_path), mode="r").read_canvas("refine", "latents", step)
        b = RenderStore.open(str(on.store_path), mode="r").read_canvas("refine", "latents", step)
        np.testing.assert_array_equal(a, b)
    assert off.video_path.read_bytes() == on.video_path.read_bytes()


def test_cache_on_is_bit_identical_between_one_and_three_workers(tmp_path, cached_render):
    with local_client(3) as c3:
        sd.render(_cached_spec(TAU), output_dir=tmp_path / "three", client=c3, progress=False)
    assert_renders_identical(cached_render.render_dir, tmp_path / "three")
    a = RenderStore.open(str(cached_render.store_path), mode="r").tile_stats("refine")["computed"]
    b = RenderStore.open(str(tmp_path / "three" / "render.zarr"), mode="r").tile_stats("refine")["computed"]
    np.testing.assert_array_equal(a, b)


def test_cache_on_resumes_bit_identical(tmp_path, cached_render):
    """A render stopped mid-stage-2 (one tile step made to fail) resumes to the same bytes."""
    from supergen_dask import tasks

    plan = sd.plan_render(_cached_spec(TAU))
    victim = sd.TileKey("refine", plan.refine.steps[9], 1, 2)
    original = tasks._tile_input

    def failing(store, p, key, device, with_state=True):
        if key == victim:
            raise RuntimeError("injected failure")
        return original(store, p, key, device, with_state)

    out = tmp_path / "r"
    with local_client(2) as c:
        tasks._tile_input = failing
        try:
            with pytest.raises(sd.RenderError):
                sd.render(_cached_spec(TAU), output_dir=out, client=c, progress=False)
        finally:
            tasks._tile_input = original
        done = RenderStore.open(str(out / "render.zarr"), mode="r").done_mask("refine")
        assert 0 < done.sum() < done.size
        sd.resume(out, client=c, progress=False)
    assert_renders_identical(cached_render.render_dir, out)


# -- balancing ------------------------------------------------------------------------------------
class _SlowModel:
    """Wraps a backend: every model call sleeps ``seconds`` (a stand-in for a GPU forward)."""

    def __init__(self, backend, seconds):
        self._b, self.seconds = backend, seconds

    def predict(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self._b.predict(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._b, name)


def test_skewed_hits_are_balanced_by_dask(tmp_path, monkeypatch):
    """The first half of the tiles (row-major: what a contiguous static split would give one of
    two workers) always hit; the rest always compute. The model calls spread over both workers
    (within one call of an even split, the stage within two calls of it) and no hit waits behind a
    model call."""
    from supergen_dask import tasks, worker_models

    seconds = 1.0
    real_get = worker_models.get_backend
    monkeypatch.setattr(tasks.worker_models, "get_backend", lambda m, d: _SlowModel(real_get(m, d), seconds))

    spec = tiny_spec(
        height=192,
        width=192,
        num_inference_steps=7,
        refine_steps=6,
        cache=CacheSettings(enabled=True, threshold=0.1, warmup_steps=2),
    )
    plan = sd.plan_render(spec)
    real_decide = tasks._decide

    def decide(store, p, key, sample, previous):
        d = real_decide(store, p, key, sample, previous)
        if key.row < 1:  # the first row: home tiles of one worker under a contiguous split: hit
            return rc.Decision(False, 0.0, 0.0, 1.0, d.tau, 1)
        return rc.Decision(True, d.change, 0.0, d.k, d.tau, 0)

    monkeypatch.setattr(tasks, "_decide", decide)
    from distributed import Client, LocalCluster

    # two workers of two threads, one GPU slot each: as GPU workers are configured
    # (``cluster.threads-per-gpu-worker``, 4 there), so CPU work runs beside a model call
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, processes=False, resources={"GPU": 1}) as cluster,
        Client(cluster) as c,
    ):
        result = sd.render(spec, output_dir=tmp_path / "r", client=c, progress=False)
    tiles = [r for r in result.receipts if r.get("task") in ("denoise", "hit") and "/" in r["name"]]
    stage2 = [r for r in tiles if r["name"].startswith("refine")]
    hits = [r for r in stage2 if r["task"] == "hit"]
    calls = [r for r in stage2 if r["task"] == "denoise"]
    g = plan.refine.grid
    assert len(hits) == 3 * g.cols  # indices 2..4 of 0..5 decide (5 is last); the first row hits
    # Steps overlap (a tile starts as soon as its own neighbours are done, and a GPU slot freed by
    # a step whose tiles hit takes the next step's ready tiles), so the makespan is measured over
    # the whole stage, in model calls: no worker runs more than one call beyond an even split
    # (work stealing may move one; 24/21 of 45 was seen on a loaded 2-core machine), and the stage
    # takes at most two calls longer than an even split's calls (one stolen, one dependency wait)
    t0 = min(r["started"] for r in stage2)
    timeline = "\n".join(  # shown when an assertion fails
        f"{r['task']} {r['name']} {r['worker'][-5:]} {r['started'] - t0:.2f}-{r['finished'] - t0:.2f}"
        for r in sorted(stage2, key=lambda r: r["started"])
    )
    per_worker: dict[str, int] = {}
    for r in calls:
        per_worker[r["worker"]] = per_worker.get(r["worker"], 0) + 1
    even = -(-len(calls) // 2)
    assert len(per_worker) == 2 and max(per_worker.values()) <= even + 1, (per_worker, timeline)
    span = max(r["finished"] for r in stage2) - t0
    longest = max(r["seconds"] for r in calls)
    assert span <= (even + 2) * longest, f"stage 2 took {span:.2f} s, even split {even} calls\n{timeline}"
    # hits run beside model calls and never take as long as one
    assert max(r["seconds"] for r in hits) < seconds


def test_cache_under_default_retention_gives_the_same_video(tmp_path, cached_render):
    """Retention frees each step's cache chunks once the decision two steps later has read them;
    the render is the same."""
    spec = tiny_spec(**CACHED, cache=CacheSettings(enabled=True, threshold=TAU))
    with local_client(2) as c:
        thin = sd.render(spec, output_dir=tmp_path / "thin", client=c, progress=False)
    assert thin.video_path.read_bytes() == cached_render.video_path.read_bytes()
    store = RenderStore.open(str(thin.store_path), mode="r")
    rf = thin.plan.refine
    assert np.isnan(store.array("refine/cache")[rf.steps.index(rf.steps[3])]).all()  # freed
    assert store.tile_stats("refine")["computed"].sum() == (
        RenderStore.open(str(cached_render.store_path), mode="r").tile_stats("refine")["computed"].sum()
    )
