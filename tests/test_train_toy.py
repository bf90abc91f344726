"""The toy's training script, as a smoke run on the CPU (the real run is on a GPU, see benchmarks/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import load_script

from pipelines import load_backend
from pipelines.toy import render_scene, render_scenes, sample_scene


def _script():
    return load_script("train_toy")


def _v2_smoke_run(tmp_path, extra: str, steps: int = 2):
    """A tiny --v2 training run on the CPU with the arguments in ``extra``; the script and its out dir."""
    train = _script()
    out = tmp_path / "run"
    args = f"--tiny --v2 --max-steps {steps} --batch 4 --data device {extra}".split()
    assert train.main(["--out", str(out), *args]) == 0
    return train, out


def test_batched_rendering_equals_one_by_one():
    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng) for _ in range(6)]
    batch = render_scenes(scenes, 40, 56, 4)
    assert batch.shape == (6, 4, 40, 56, 3) and batch.dtype == torch.uint8
    for scene, clip in zip(scenes, batch, strict=True):
        np.testing.assert_array_equal(clip.numpy(), render_scene(scene, 40, 56, 4))


def test_device_batches_are_seeded():
    train = _script()
    a, b = train.device_batches(3, seed=5, device="cpu"), train.device_batches(3, seed=5, device="cpu")
    for _ in range(2):
        (clips_a, prompts_a), (clips_b, prompts_b) = next(a), next(b)
        assert torch.equal(clips_a, clips_b) and prompts_a == prompts_b
    c = train.device_batches(3, seed=6, device="cpu")
    assert not torch.equal(next(c)[0], clips_a)


def test_smoke_run_writes_a_loadable_toy_and_a_report(tmp_path):
    train = _script()
    out = tmp_path / "run"
    args = ["--out", str(out), "--tiny", "--max-steps", "3", "--batch", "4", "--data", "device"]
    args += [
        "--eval-prompts",
        "2",
        "--holdout-prompts",
        "3",
        "--eval-steps",
        "2",
        "3",
        "--eval-guidance",
        "3",
        "5",
    ]
    assert train.main(args) == 0
    report = json.loads((out / "train_report.json").read_text())
    assert report["steps"] == 3 and len(report["loss_log"]) == 1
    sweep = report["sampling_sweep"]
    assert len(sweep["grid"]) == 4 and sweep["holdout"]["n"] == 3
    info = json.loads((out / "toy" / "supergen.json").read_text())
    assert info["default_steps"] == sweep["chosen"]["steps"]
    assert info["default_guidance"] == sweep["chosen"]["guidance"]
    assert info["native_accuracy"] == sweep["holdout"]["accuracy"]
    held = {s["prompt"] for s in sweep["holdout"]["samples"]}
    assert held and not held & set(train.evaluation_prompts_for_selection(2))
    backend = load_backend(str(out / "toy"), device="cpu", dtype=torch.float32)
    assert backend.info.default_steps == sweep["chosen"]["steps"]
    assert (out / "native_samples.png").stat().st_size > 0


def test_v2_data_shows_the_default_background_when_the_prompt_names_none():
    train = _script()
    from pipelines.toy import BG_COLOURS, DEFAULT_BACKGROUND

    clips, prompts = train.draw_batch(np.random.default_rng(0), 24, "cpu", drop=0.0, v2=True)
    dark = np.array(BG_COLOURS[DEFAULT_BACKGROUND[0]]) * 1.3  # the gradient's brightest
    named = [" background" in p for p in prompts]
    assert any(named) and not all(named)
    for clip, has_bg in zip(clips.numpy(), named, strict=True):
        corner_max = clip[:, :2, :2].max()  # the object never covers every frame's corner
        if not has_bg:
            assert corner_max <= dark.max() + 1
    v1, _ = train.draw_batch(np.random.default_rng(0), 24, "cpu", drop=0.0)
    assert not np.array_equal(v1.numpy(), clips.numpy())


def test_v2_smoke_run_reports_the_scene_checks(tmp_path):
    train, out = _v2_smoke_run(
        tmp_path, "--eval-prompts 2 --holdout-prompts 2 --eval-steps 2 --eval-guidance 4"
    )
    holdout = json.loads((out / "train_report.json").read_text())["sampling_sweep"]["holdout"]
    assert holdout["n"] == 3  # two held-out grammar prompts and the short form of one
    assert set(holdout["checks"]) == {"one_every_frame", "colour", "shape", "direction", "all", "n"}
    assert any(" background" not in s["prompt"] for s in holdout["samples"])
    assert all(isinstance(s["one_every_frame"], bool) for s in holdout["samples"])


def test_shifted_noise_levels_train_the_layout_levels():
    train = _script()
    gen = torch.Generator().manual_seed(0)
    plain = train.sample_t(20000, "cpu", generator=gen)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(train.sample_t(20000, "cpu", shift=4.0, share=0.0, generator=gen), plain)
    gen = torch.Generator().manual_seed(0)
    shifted = train.sample_t(20000, "cpu", shift=4.0, share=1.0, generator=gen)
    assert ((shifted > 0) & (shifted < 1)).all() and (shifted >= plain).all()
    assert (plain > 0.95).float().mean() < 0.005 and (shifted > 0.95).float().mean() > 0.04
    gen = torch.Generator().manual_seed(0)
    half = train.sample_t(20000, "cpu", shift=4.0, share=0.5, generator=gen)
    moved = (half != plain).float().mean().item()
    assert 0.45 < moved < 0.55
    for bad in (["--t-shift", "0"], ["--t-shift-share", "1.5"]):
        with pytest.raises(SystemExit):
            train.main(["--out", "unused", "--tiny", *bad])


def test_the_chosen_flow_shift_is_saved_with_the_toy(tmp_path):
    train, out = _v2_smoke_run(
        tmp_path,
        "--eval-prompts 2 --holdout-prompts 2 --eval-steps 2 --eval-guidance 4"
        " --eval-flow-shift 1 3 --t-shift 4 --t-shift-share 0.5",
    )
    sweep = json.loads((out / "train_report.json").read_text())["sampling_sweep"]
    assert sorted(r["flow_shift"] for r in sweep["grid"]) == [1.0, 3.0]
    chosen = sweep["chosen"]["flow_shift"]
    assert sweep["holdout"]["flow_shift"] == chosen
    backend = load_backend(str(out / "toy"), device="cpu", dtype=torch.float32)
    assert backend.info.scheduler_config["flow_shift"] == chosen
    info = json.loads((out / "toy" / "supergen.json").read_text())
    assert set(info["scene_checks"]) >= {"one_every_frame", "direction", "all"}


def test_a_frozen_text_encoder_is_saved_unchanged(tmp_path):
    train, out = _v2_smoke_run(
        tmp_path,
        "--eval-prompts 1 --holdout-prompts 1 --eval-steps 2 --freeze-text --lr 1e-2 --warmup 1",
        steps=3,
    )
    from transformers import UMT5EncoderModel

    from pipelines.toy.model import build_text_encoder

    saved = UMT5EncoderModel.from_pretrained(out / "toy", subfolder="text_encoder", torch_dtype=torch.float32)
    fresh = build_text_encoder(0).to(torch.float16).float()  # the toy is saved in float16
    for (name, a), (_, b) in zip(saved.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_toy_with_frames_grouped_in_fours_trains_saves_and_samples(tmp_path):
    train, out = _v2_smoke_run(
        tmp_path, "--eval-prompts 1 --holdout-prompts 1 --eval-steps 2 --temporal-factor 4"
    )
    backend = load_backend(str(out / "toy"), device="cpu", dtype=torch.float32)
    info = backend.info
    assert info.temporal_factor == 4 and info.latent_channels == 192 and info.latent_frames(9) == 3
    clip = render_scene(sample_scene(np.random.default_rng(1)), 64, 64, 9)
    video = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    z = backend.vae_encode(video)
    assert z.shape == (1, 192, 3, 16, 16)
    torch.testing.assert_close(backend.vae_decode(z), video, atol=1e-5, rtol=0)
    # a toy of one layout cannot continue as the other
    with pytest.raises(SystemExit):
        train.main(["--out", str(tmp_path / "again"), "--init", str(out / "toy"), "--max-steps", "1"])
