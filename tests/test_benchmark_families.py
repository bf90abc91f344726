"""The families benchmark's argument parsing and per-model specs (its GPU runs happen on the
device machine; here nothing loads a model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "families", Path(__file__).resolve().parents[1] / "benchmarks" / "families.py"
)
families = importlib.util.module_from_spec(spec)
spec.loader.exec_module(families)


def test_arguments_default_to_the_three_presets_at_2k_with_a_short_schedule():
    args = families.parse_args(["--out", "x.json"])
    assert set(args.models) == {
        "random-cogvideox1.5-5b-shape",
        "random-hunyuanvideo-shape",
        "random-wan2.1-1.3b-shape",
    }
    assert (args.width, args.height, args.num_inference_steps, args.refine_steps) == (2560, 1440, 6, 3)
    assert args.frames == {}
    args = families.parse_args(
        ["--out", "x", "--models", "random-hunyuanvideo-shape"] + ["--frames", "random-hunyuanvideo-shape=17"]
    )
    assert args.frames == {"random-hunyuanvideo-shape": 17}
    for bad in (
        ["--frames", "17"],
        ["--frames", "random-wan2.1-1.3b-shape=17", "--models", "random-hunyuanvideo-shape"],
    ):
        with pytest.raises(SystemExit):
            families.parse_args(["--out", "x", *bad])


@pytest.mark.parametrize(
    "name, frames, batch, tiles, native_tile",
    [
        ("random-cogvideox1.5-5b-shape", 49, 2, 4, (96, 170)),
        ("random-hunyuanvideo-shape", 33, 1, 4, (90, 160)),
        ("random-wan2.1-1.3b-shape", 81, 2, 12, (60, 104)),
    ],
)
def test_each_model_gets_a_tiled_2k_render_and_a_one_tile_native_one(name, frames, batch, tiles, native_tile):
    m = families.model_specs(name, families.parse_args(["--out", "x"]))
    plan, native = m["plan"], m["native_plan"]
    assert m["num_frames"] == frames and plan.model.frames_ok(frames) and m["frames_why"]
    assert m["guidance_batch"] == batch  # HunyuanVideo is guidance-distilled: real CFG off
    assert plan.sketch is not None and plan.refine.grid.n_tiles == tiles and len(plan.refine.steps) == 3
    assert plan.spec.dtype == "bfloat16" and (plan.spec.width, plan.spec.height) == (2560, 1440)
    assert native.sketch is None and native.refine.grid.n_tiles == 1 and len(native.refine.steps) == 6
    g = native.refine.grid
    assert (g.tile_h, g.tile_w) == native_tile
    assert m["tile_shape"] == (16, plan.latent_frames, plan.refine.grid.tile_h, plan.refine.grid.tile_w)


def test_frames_can_be_chosen_per_model():
    args = families.parse_args(["--out", "x", "--frames", "random-hunyuanvideo-shape=17"])
    m = families.model_specs("random-hunyuanvideo-shape", args)
    assert m["num_frames"] == 17 and m["frames_why"] == "--frames"


def test_it_refuses_to_run_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert families.main(["--out", str(tmp_path / "r.json")]) == 2
    assert "only runs on a GPU" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
