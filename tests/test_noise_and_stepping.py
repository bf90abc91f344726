"""Position-keyed noise and region-wise scheduler steps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.wan import FLOW_UNIPC
from supergen_dask.noise import position_noise
from supergen_dask.stepping import RegionStep, SchedulerRef, check_tileable, renoise, state_slots


@settings(max_examples=30, deadline=None)
@given(y0=st.integers(0, 40), x0=st.integers(0, 40), h=st.integers(1, 30), w=st.integers(1, 30))
def test_noise_depends_only_on_position(y0, x0, h, w):
    whole = position_noise(5, "refine", 2, 3, 0, 0, 72, 72)
    part = position_noise(5, "refine", 2, 3, y0, x0, h, w)
    assert torch.equal(part, whole[:, :, y0 : y0 + h, x0 : x0 + w])


def test_noise_streams_and_seeds_differ_and_are_gaussian():
    a = position_noise(1, "sketch", 3, 4, 0, 0, 64, 64)
    assert not torch.equal(a, position_noise(2, "sketch", 3, 4, 0, 0, 64, 64))
    assert not torch.equal(a, position_noise(1, "refine", 3, 4, 0, 0, 64, 64))
    assert abs(a.mean().item()) < 0.05 and abs(a.std().item() - 1) < 0.05


SCHEDULERS = [
    ("UniPCMultistepScheduler", FLOW_UNIPC),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),
    ("DPMSolverMultistepScheduler", {}),
    ("EulerDiscreteScheduler", {}),
    ("DDIMScheduler", {}),
]


@pytest.mark.parametrize("cls, cfg", SCHEDULERS)
def test_region_steps_equal_full_canvas_steps(cls, cfg):
    """Stepping 2x2 shifted tiles of the canvas with per-region history == stepping the canvas."""
    ref = SchedulerRef.create(cls, cfg, 10)
    begin = 3
    full = ref.build()
    if hasattr(full, "set_begin_index"):
        full.set_begin_index(begin)
    g = torch.Generator().manual_seed(0)
    x_full = torch.randn(1, 4, 2, 12, 16, generator=g)
    x_tiled = x_full.clone()
    state: dict = {}
    for i in range(begin, 10):
        out = torch.randn(1, 4, 2, 12, 16, generator=g)
        t = full.timesteps[i]
        scale = getattr(full, "scale_model_input", None)
        if scale is not None:
            scale(x_full, t)  # Euler wants it called before step
        x_full = full.step(out, t, x_full, return_dict=False)[0]
        oy, ox = (i * 5) % 6, (i * 3) % 8

        def roll(v, s=1, oy=oy, ox=ox):
            return torch.roll(v, (-s * oy, -s * ox), (-2, -1))

        rx, rout = roll(x_tiled), roll(out)
        rstate = {n: {k: roll(v) for k, v in d.items()} for n, d in state.items()}
        new, new_state = torch.empty_like(rx), {}
        for r in range(2):
            for c in range(2):
                sl = (..., slice(r * 6, r * 6 + 6), slice(c * 8, c * 8 + 8))
                step = RegionStep(ref, begin, i)
                step.load({n: {k: v[sl] for k, v in d.items()} for n, d in rstate.items()})
                step.scale_model_input(rx[sl])
                y, st_ = step.step(rout[sl], rx[sl])
                new[sl] = y
                for n, d in st_.items():
                    for k, v in d.items():
                        new_state.setdefault(n, {}).setdefault(k, torch.empty_like(rx))[sl] = v
        x_tiled = roll(new, -1)
        state = {n: {k: roll(v, -1) for k, v in d.items()} for n, d in new_state.items()}
        assert torch.equal(x_full, x_tiled), f"{cls} step {i}"


@pytest.mark.parametrize("cls, cfg", SCHEDULERS[:3])
def test_replays_kept_by_the_process_step_like_a_fresh_replay(cls, cfg):
    """A region's scheduler comes from the process's kept replays (copied, continued from the
    nearest earlier one) in any order of steps, and a region's tensors loaded into one copy never
    reach the next: each steps exactly like a scheduler replayed from scratch."""
    ref = SchedulerRef.create(cls, cfg, 12)
    begin = 2
    g = torch.Generator().manual_seed(1)
    for i in (9, 4, 5, 11, 4, 2, 10):
        fresh = ref.build()
        if hasattr(fresh, "set_begin_index"):
            fresh.set_begin_index(begin)
        for j in range(begin, i):
            fresh.step(torch.zeros(1, 1, 1, 1, 1), fresh.timesteps[j], torch.zeros(1, 1, 1, 1, 1))
        step = RegionStep(ref, begin, i)
        history = {
            n: {k: torch.randn(1, 2, 3, 4, 5, generator=g) for k in slots}
            for n, slots in step.present().items()
        }
        step.load(history)
        oracle = RegionStep.__new__(RegionStep)
        oracle.ref, oracle.index, oracle.kinds = ref, i, step.kinds
        oracle.scheduler, oracle.timestep = fresh, fresh.timesteps[i]
        oracle.load(history)
        x, out = torch.randn(2, 1, 2, 3, 4, 5, generator=g)
        assert step.timestep == oracle.timestep
        a, a_state = step.step(out, x)
        b, b_state = oracle.step(out, x)
        assert torch.equal(a, b), (cls, i)
        assert {n: sorted(d) for n, d in a_state.items()} == {n: sorted(d) for n, d in b_state.items()}
        assert all(torch.equal(a_state[n][k], b_state[n][k]) for n in a_state for k in a_state[n])


def test_multistep_history_is_required():
    ref = SchedulerRef.create("UniPCMultistepScheduler", FLOW_UNIPC, 8)
    assert state_slots(ref) == {"model_outputs": 2, "last_sample": 1}
    step = RegionStep(ref, 2, 4)
    assert step.present() == {"model_outputs": [0, 1], "last_sample": [0]}
    with pytest.raises(ValueError, match="needed"):
        step.load({})
    assert state_slots(SchedulerRef.create("FlowMatchEulerDiscreteScheduler", {}, 8)) == {}


def test_untileable_schedulers_are_refused():
    with pytest.raises(ValueError, match="thresholding"):
        check_tileable(SchedulerRef.create("DPMSolverMultistepScheduler", {"thresholding": True}, 10))
    with pytest.raises(ValueError, match="SDE"):
        check_tileable(
            SchedulerRef.create("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 10)
        )
    with pytest.raises(ValueError, match="not supported"):
        check_tileable(SchedulerRef.create("EulerAncestralDiscreteScheduler", {}, 10))


def test_renoise_follows_the_flow_matching_rule():
    ref = SchedulerRef.create("UniPCMultistepScheduler", FLOW_UNIPC, 10)
    x0, eps = torch.randn(1, 2, 1, 4, 4), torch.randn(1, 2, 1, 4, 4)
    sigma = ref.build().sigmas[6]
    torch.testing.assert_close(renoise(ref, 6, x0, eps), sigma * eps + (1 - sigma) * x0)


def test_every_supported_diffusers_scheduler_is_imported_from_its_own_module():
    import subprocess
    import sys

    import diffusers

    from pipelines.schedulers import DIFFUSERS_MODULES, SUPPORTED, make_scheduler

    assert set(DIFFUSERS_MODULES) == SUPPORTED - {"FlowMatchSigmasScheduler"}
    for name in DIFFUSERS_MODULES:
        assert type(make_scheduler(name, {})) is getattr(diffusers, name)
    # in a fresh process, threads importing diffusers' models while another looks a scheduler up
    # (what a GPU worker's warm-up and its first stage task do)
    code = (
        "import threading\n"
        "from pipelines.schedulers import make_scheduler\n"
        "def models():\n"
        "    import diffusers\n"
        "    diffusers.WanTransformer3DModel, diffusers.AutoencoderKLWan\n"
        "ts = [threading.Thread(target=models) for _ in range(2)]\n"
        "[t.start() for t in ts]\n"
        "s = make_scheduler('UniPCMultistepScheduler', {})\n"
        "[t.join() for t in ts]\n"
        "print(type(s).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "UniPCMultistepScheduler", out.stderr[-2000:]
