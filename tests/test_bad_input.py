"""Bad input of every kind: one line ``error: ...`` naming what is wrong, the documented exit code,
nothing written, and no waiting (no hang on a cluster that can never start or answer)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dask.config
import pytest

from pipelines.wan import save_tiny_pipeline
from supergen_dask.cli import EXIT_BAD_INPUT, main
from supergen_dask.cluster import client_for, make_cluster

FAST = ["--model", "tiny-random-wan", "--num-inference-steps", "2", "--refine-steps", "1"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny")


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _spec(tmp: Path, name: str, text: str | bytes) -> list[str]:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["render", "--spec", str(path)]


def _model_dir(tmp: Path, tiny: Path, change) -> list[str]:
    d = _copy_model(tiny, tmp / "model")
    change(d)
    return ["render", "--prompt", "x", "--model", str(d), "--num-inference-steps", "2"]


def _pickle_only(d: Path) -> None:
    w = d / "transformer" / "diffusion_pytorch_model.safetensors"
    w.rename(w.with_suffix(".bin"))


def _file_as_parent(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["render", "--prompt", "x", *FAST, "--output-dir", str(tmp / "afile" / "sub")]


def _file_as_dir(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["render", "--prompt", "x", *FAST, "--output-dir", str(tmp / "afile")]


# (id, argv builder, words the message must contain). argv builders take (tmp, tiny model dir).
CASES = [
    # command-line options
    ("workers-0", lambda t, m: ["render", "--prompt", "x", "--workers", "0"], ["--workers"]),
    ("workers-negative", lambda t, m: ["render", "--prompt", "x", "--workers", "-1"], ["--workers"]),
    ("workers-per-gpu-0", lambda t, m: ["render", "--prompt", "x", "--workers-per-gpu", "0"], ["--workers-per-gpu"]),
    ("resume-workers-0", lambda t, m: ["resume", str(t), "--workers", "0"], ["--workers"]),
    ("height-not-multiple", lambda t, m: ["render", "--prompt", "x", "--height", "65"], ["height", "64 or 68"]),
    ("height-huge", lambda t, m: ["render", "--prompt", "x", "--height", "100000", "--width", "100000"], ["too large", "tile tasks"]),
    ("frames-huge", lambda t, m: ["render", "--prompt", "x", "--num-frames", "100001"], ["too large", "worker memory"]),
    ("frames-not-allowed", lambda t, m: ["render", "--prompt", "x", *FAST, "--num-frames", "4"], ["num_frames"]),
    ("negative-guidance", lambda t, m: ["render", "--prompt", "x", "--guidance-scale", "-1"], ["guidance_scale"]),
    ("k-over-steps", lambda t, m: ["render", "--prompt", "x", "--num-inference-steps", "5", "--refine-steps", "9"], ["refine_steps"]),
    ("steps-zero", lambda t, m: ["render", "--prompt", "x", "--num-inference-steps", "0"], ["num_inference_steps"]),
    ("scheduler", lambda t, m: ["render", "--prompt", "x", "--scheduler", "ddpm-magic"], ["scheduler"]),
    ("dtype", lambda t, m: ["render", "--prompt", "x", "--dtype", "int8"], ["dtype"]),
    ("tile-policy", lambda t, m: ["render", "--prompt", "x", "--tile-policy", "round"], ["tile_policy"]),
    ("crf", lambda t, m: ["render", "--prompt", "x", "--crf", "99"], ["output.crf"]),
    ("shift-divisions", lambda t, m: ["render", "--prompt", "x", "--shift-divisions", "0"], ["shift.divisions"]),
    ("fps", lambda t, m: ["render", "--prompt", "x", "--fps", "0"], ["fps"]),
    ("seed", lambda t, m: ["render", "--prompt", "x", "--seed", "-1"], ["seed"]),
    ("empty-prompt", lambda t, m: ["render", "--prompt", " "], ["prompt"]),
    ("no-prompt", lambda t, m: ["render", "--height", "64"], ["prompt"]),
    ("unknown-model", lambda t, m: ["render", "--prompt", "x", "--model", "no-such-model"], ["model", "no-such-model"]),
    # spec files
    ("yaml-syntax", lambda t, m: _spec(t, "s.yaml", "prompt: [unclosed\n"), ["s.yaml", "line"]),
    ("yaml-tag", lambda t, m: _spec(t, "s.yaml", "prompt: !!python/object/apply:os.system ['true']\n"), ["s.yaml", "tags"]),
    ("yaml-list", lambda t, m: _spec(t, "s.yaml", "- prompt: x\n"), ["s.yaml", "mapping"]),
    ("yaml-shift-list", lambda t, m: _spec(t, "s.yaml", "prompt: x\nshift: [1, 2]\n"), ["shift", "mapping"]),
    ("yaml-shift-string", lambda t, m: _spec(t, "s.yaml", "prompt: x\nshift: abc\n"), ["shift", "mapping"]),
    ("yaml-shift-order", lambda t, m: _spec(t, "s.yaml", "prompt: x\nshift: {order: zigzag}\n"), ["shift.order", "walk, spread"]),
    ("cli-shift-order", lambda t, m: ["render", "--prompt", "x", "--shift-order", "zigzag"], ["shift.order", "zigzag"]),
    ("yaml-shift-list-no-shift", lambda t, m: [*_spec(t, "s.yaml", "prompt: x\nshift: [1]\n"), "--no-shift"], ["shift"]),
    ("yaml-output-string", lambda t, m: [*_spec(t, "s.yaml", "prompt: x\noutput: h264\n"), "--crf", "3"], ["output"]),
    ("yaml-int-keys", lambda t, m: _spec(t, "s.yaml", "prompt: x\n1: 2\n"), ["unknown field"]),
    ("yaml-height-string", lambda t, m: _spec(t, "s.yaml", "prompt: x\nheight: abc\n"), ["height"]),
    (
        "yaml-cache-bad-threshold",
        lambda t, m: _spec(t, "s.yaml", "prompt: x\ncache: {enabled: true, threshold: -1}\n"),
        ["cache.threshold"],
    ),
    ("cli-cache-word", lambda t, m: ["render", "--prompt", "x", "--cache", "fast"], ["--cache", "fast"]),
    ("yaml-not-utf8", lambda t, m: _spec(t, "s.yaml", b"prompt: \xff\xfe\n"), ["s.yaml", "UTF-8"]),
    ("spec-is-directory", lambda t, m: ["render", "--spec", str(t)], ["is a directory"]),
    ("spec-missing", lambda t, m: ["render", "--spec", str(t / "nope.yaml")], ["nope.yaml"]),
    ("json-invalid", lambda t, m: _spec(t, "s.json", '{"prompt": "x",}'), ["s.json", "line 1"]),
    ("json-list", lambda t, m: _spec(t, "s.json", '["x"]'), ["s.json", "mapping"]),
    ("json-unknown-field", lambda t, m: _spec(t, "s.json", '{"prompt": "x", "colour": 1}'), ["colour"]),
    # model directories
    ("index-garbage", lambda t, m: _model_dir(t, m, lambda d: (d / "model_index.json").write_text("{{{")), ["model_index.json"]),
    ("index-list", lambda t, m: _model_dir(t, m, lambda d: (d / "model_index.json").write_text("[1]")), ["model_index.json", "list"]),
    ("index-class", lambda t, m: _model_dir(t, m, lambda d: (d / "model_index.json").write_text('{"_class_name": "X"}')), ["X pipeline"]),
    ("no-component-configs", lambda t, m: _model_dir(t, m, lambda d: (d / "transformer" / "config.json").unlink()), ["config.json", "missing"]),
    ("config-garbage", lambda t, m: _model_dir(t, m, lambda d: (d / "vae" / "config.json").write_text("nope")), ["vae", "config.json"]),
    ("scheduler-config-list", lambda t, m: _model_dir(t, m, lambda d: (d / "scheduler" / "scheduler_config.json").write_text("[]")), ["scheduler_config.json"]),
    ("pickle-only-weights", lambda t, m: _model_dir(t, m, _pickle_only), ["transformer", "pickle weights"]),
    ("no-weights", lambda t, m: _model_dir(t, m, lambda d: (d / "vae" / "diffusion_pytorch_model.safetensors").unlink()), ["vae", "no safetensors"]),
    # output paths
    ("output-under-file", lambda t, m: _file_as_parent(t), ["afile", "not a directory"]),
    ("output-is-file", lambda t, m: _file_as_dir(t), ["afile", "not a directory"]),
    # cluster addresses
    ("address-dead", lambda t, m: ["render", "--prompt", "x", *FAST, "--output-dir", str(t / "out"), "--address", "tcp://127.0.0.1:1"], ["tcp://127.0.0.1:1"]),
    ("address-scheme", lambda t, m: ["render", "--prompt", "x", *FAST, "--address", "http://127.0.0.1:1"], ["http://127.0.0.1:1", "scheme"]),
    ("address-no-port", lambda t, m: ["render", "--prompt", "x", *FAST, "--address", "scheduler"], ["scheduler", "port"]),
    ("address-empty", lambda t, m: ["render", "--prompt", "x", "--address", " "], ["--address"]),
    # existing directories
    ("resume-not-a-render", lambda t, m: ["resume", str(t / "nothing")], ["no render store"]),
    ("info-not-a-render", lambda t, m: ["info", str(t / "nothing")], ["no render store"]),
    ("verify-not-a-render", lambda t, m: ["verify", str(t / "nothing")], ["no render store"]),
]  # fmt: skip


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("build, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, tiny_dir, capsys, build, words):
    case = tmp_path / "case"
    case.mkdir()
    argv = build(case, tiny_dir)
    if argv[0] == "render" and "--output-dir" not in argv:
        argv += ["--output-dir", str(case / "out")]
    if argv[0] in ("render", "resume") and "--address" not in argv:
        argv += ["--address", "tcp://127.0.0.1:1"]  # a case that wrongly passes must not render
    before = _files(tmp_path)
    t0 = time.perf_counter()
    with dask.config.set({"supergen.cluster.connect-timeout": "2s"}):
        code = main(argv)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert _files(tmp_path) == before, "bad input must write nothing"
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_the_table_is_big_enough():
    assert len(CASES) >= 40


def test_verbose_shows_the_traceback(tmp_path, capsys):
    assert main(["render", "--spec", str(tmp_path), "--verbose"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" in err


@pytest.mark.parametrize("n", [0, -1])
def test_python_cluster_with_no_workers_is_an_error(n):
    with pytest.raises(ValueError, match="n_workers"):
        make_cluster(n_workers=n, gpu=False)
    with pytest.raises(ValueError, match="n_workers"), client_for(n_workers=n):
        pass


def test_dead_address_fails_fast_from_python():
    from supergen_dask.cluster import ClusterError

    t0 = time.perf_counter()
    with (
        dask.config.set({"supergen.cluster.connect-timeout": "1s"}),
        pytest.raises(ClusterError, match="tcp://127.0.0.1:1"),
        client_for(address="tcp://127.0.0.1:1"),
    ):
        pass
    assert time.perf_counter() - t0 < 10


def test_pickle_only_model_is_refused_at_planning(tmp_path, tiny_dir):
    import supergen_dask as sd

    d = _copy_model(tiny_dir, tmp_path / "m")
    _pickle_only(d)
    with pytest.raises(sd.SpecError, match="pickle weights") as info:
        sd.plan_render(sd.RenderSpec(prompt="x", model=str(d)))
    assert info.value.field == "model"
    # the complete directory plans, and its estimate counts its weight files
    plan = sd.plan_render(sd.RenderSpec(prompt="x", model=str(tiny_dir)))
    assert plan.estimate().weights_bytes > 0
    assert json.loads(json.dumps(plan.estimate().to_dict()))["tile_tasks"] == plan.n_tile_tasks()


def test_read_only_output_filesystem_is_bad_input(tmp_path, monkeypatch, capsys):
    # a read-only mount cannot be made here (tests may run as root, for whom chmod is no barrier)
    from supergen_dask import preflight

    monkeypatch.setattr(preflight, "_read_only", lambda path: True)
    argv = ["render", "--prompt", "x", *FAST, "--output-dir", str(tmp_path / "out")]
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "read-only filesystem" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_interrupt_names_the_render_directory(tmp_path, monkeypatch, capsys):
    from supergen_dask import graph

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(graph, "run_render", interrupted)
    out = tmp_path / "out"
    argv = ["render", "--prompt", "x", *FAST, "--output-dir", str(out), "--threads", "--workers", "1"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"supergen resume {out}" in err and "<render dir>" not in err


def test_dry_run_prints_the_estimate_and_writes_nothing(tmp_path, capsys):
    argv = ["render", "--prompt", "x", *FAST, "--output-dir", str(tmp_path / "out"), "--dry-run"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "estimate:" in printed and "tile tasks" in printed and "render directory:" in printed
    assert not (tmp_path / "out").exists()


def test_limits_are_settings_and_force_overrides_them(tmp_path, capsys):
    argv = ["render", "--prompt", "x", *FAST, "--output-dir", str(tmp_path / "out"), "--dry-run"]
    with dask.config.set({"supergen.limits.max-tile-tasks": 3}):
        assert main(argv) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert "supergen.limits.max-tile-tasks" in err and "--force" in err
        assert main([*argv, "--force"]) == 0
    with dask.config.set({"supergen.limits.max-store-bytes": "1kB"}):
        assert main(argv) == EXIT_BAD_INPUT and "max-store-bytes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
