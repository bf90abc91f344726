"""The pre-flight GPU estimate: it reproduces the measurement it is scaled from, scales with
tokens and model size, and says what it is (an estimate, for which card) or why there is none."""

from __future__ import annotations

import dask.config
import pytest
from conftest import tiny_spec

import supergen_dask as sd
from supergen_dask.cli import main
from supergen_dask.gpu_cost import TransformerShape, forward_flops

MEASURED_FORWARD = 1.24557  # s, benchmarks/results/tile_overhead-h200.json (CFG batch of two)
MEASURED_PEAK_GIB = 5.791  # benchmarks/results/scaling-h200.json


def _plan(**kw):
    spec = sd.RenderSpec(prompt="x", model="random-wan2.1-1.3b-shape", num_frames=81, **kw)
    with dask.config.set({"supergen.limits.enabled": False}):
        return sd.plan_render(spec)


def test_the_measured_tile_gets_the_measured_time_and_memory():
    # the benchmark's render: 2560x1440 on native 60x104 tiles (32,760 tokens), bf16
    plan = _plan(
        height=1440, width=2560, tile_policy="native", dtype="bfloat16", num_inference_steps=8, refine_steps=3
    )
    gpu = plan.estimate().gpu
    assert gpu.tile_tokens == 32760 and "H200" in gpu.card
    forwards = len(plan.refine.steps) * plan.refine.grid.n_tiles + len(plan.sketch.steps)
    assert plan.sketch.grid.tile_h * plan.sketch.grid.tile_w == 60 * 106
    per_tile = (gpu.seconds - gpu.sketch_seconds) / (len(plan.refine.steps) * plan.refine.grid.n_tiles)
    assert per_tile == pytest.approx(MEASURED_FORWARD * 1.124, rel=0.01)
    assert gpu.seconds > forwards * MEASURED_FORWARD  # the task overhead is counted
    assert gpu.peak_bytes / 2**30 == pytest.approx(MEASURED_PEAK_GIB, rel=0.01)


def test_the_estimate_scales_with_tokens_and_model_size():
    a = _plan(height=1440, width=2560, dtype="bfloat16").estimate().gpu
    b = _plan(height=2160, width=3840, dtype="bfloat16").estimate().gpu
    assert b.seconds > 1.8 * a.seconds  # 25 tiles of 54x96 vs 12 of 60x80
    small = TransformerShape(30, 1536, 8960, 4096)
    big = TransformerShape(40, 5120, 13824, 4096)  # the 14B Wan's shape
    # 10x the weights, ~6x the FLOPs: attention (quadratic in tokens) weighs more in the small one
    assert 4 * forward_flops(small, 32760, 512) < forward_flops(big, 32760, 512)
    assert forward_flops(big, 32760, 512) < 10 * forward_flops(small, 32760, 512)
    assert big.params == pytest.approx(14e9, rel=0.15) and small.params == pytest.approx(1.4e9, rel=0.05)


def test_overhead_bound_models_get_no_time_and_say_why(capsys):
    est = sd.plan_render(tiny_spec()).estimate()
    assert est.gpu is not None and est.gpu.seconds is None
    assert "no time estimate" in est.gpu.summary() and "overhead" in est.gpu.summary()


def test_dry_run_prints_the_gpu_estimate_labelled(tmp_path, capsys):
    argv = ["render", "--model", "random-wan2.1-1.3b-shape", "--prompt", "x", "--height", "2160"]
    argv += [
        "--width",
        "3840",
        "--num-frames",
        "81",
        "--dry-run",
        "--force",
        "--output-dir",
        str(tmp_path / "r"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("GPU memory per worker"))
    assert "an estimate for one NVIDIA H200 in bf16" in line and "of GPU time" in line
    assert "+0.0% compute on padding" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "cls_name, published",
    [
        # weights counted on the meta device (tests/test_real_size_presets.py)
        ("HunyuanVideoTransformer3DModel", 12_821_012_544),
        ("WanTransformer3DModel", None),
    ],
)
def test_weight_count_of_the_estimate_is_near_the_models(cls_name, published):
    import diffusers
    import torch

    cls = getattr(diffusers, cls_name)
    with torch.device("meta"):
        model = cls()  # the class's defaults: HunyuanVideo's are the 13B model's
    real = sum(p.numel() for p in model.parameters())
    assert published is None or real == published
    estimate = TransformerShape.from_config(dict(model.config)).params
    # the formula counts the blocks and the text projection; embeddings and norms are left out
    assert 0.95 * real <= estimate <= 1.0 * real, (estimate, real)
