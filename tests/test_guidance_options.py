"""Per-family guidance options under diffusers' names: Wan 2.2 A14B's ``guidance_scale_2`` (the
second expert's scale, below the boundary timestep) through the spec and the CLI."""

from __future__ import annotations

import pytest
import torch
from family_checks import assert_steps_close, collect_steps, native_spec, stored_steps

import supergen_dask as sd
from pipelines.wan import save_tiny_pipeline
from supergen_dask.cli import build_parser, spec_from_args
from supergen_dask.plan import plan_render
from supergen_dask.spec import SpecError


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "wan-a14b", variant="2.2-a14b")


def test_guidance_scale_2_is_the_low_noise_experts_scale(tmp_path, client, a14b):
    from diffusers import WanPipeline

    steps = 6
    spec = native_spec(a14b, steps=steps, guidance=5.0, frames=9, size=(64, 64), guidance_scale_2=2.0)
    plan = plan_render(spec)
    boundary = plan.model.guidance_boundary
    assert boundary == 875.0
    ts = plan.refine.timesteps
    assert min(ts) < boundary <= max(ts)  # both experts, both scales take part
    assert [plan.guidance(s) for s in plan.refine.steps] == [5.0 if t >= boundary else 2.0 for t in ts]
    result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    start, ours, (neg, pos) = stored_steps(result)
    pipe = WanPipeline.from_pretrained(str(a14b))
    theirs = collect_steps(
        pipe,
        prompt_embeds=torch.from_numpy(pos)[None],
        negative_prompt_embeds=torch.from_numpy(neg)[None],
        latents=torch.from_numpy(start).permute(1, 0, 2, 3)[None],
        num_inference_steps=steps,
        guidance_scale=5.0,
        guidance_scale_2=2.0,
        height=64,
        width=64,
        num_frames=9,
    )
    assert_steps_close(ours, [t[0].permute(1, 0, 2, 3) for t in theirs])


def test_guidance_scale_2_defaults_to_guidance_scale_and_is_refused_for_one_expert(a14b):
    resolved = sd.RenderSpec(prompt="a red circle", model=str(a14b), guidance_scale=4.0).resolved()
    assert resolved.guidance_scale_2 == 4.0
    assert sd.RenderSpec(prompt="a red circle", model="tiny-random-wan").resolved().guidance_scale_2 is None
    with pytest.raises(SpecError, match=r"^guidance_scale_2: model tiny-random-wan has one denoiser"):
        sd.RenderSpec(prompt="x", model="tiny-random-wan", guidance_scale_2=3.0).resolved()
    with pytest.raises(SpecError, match="guidance_scale_2: must be a finite number"):
        sd.RenderSpec(prompt="x", model=str(a14b), guidance_scale_2=float("nan")).resolved()
    args = build_parser().parse_args(
        ["render", "--prompt", "x", "--model", str(a14b), "--guidance-scale-2", "3"]
    )
    assert spec_from_args(args).guidance_scale_2 == 3.0
