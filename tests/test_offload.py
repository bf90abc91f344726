"""Offloading (``supergen.worker.offload``, ``--offload``): a worker setting that reaches the workers,
is checked before any work, puts diffusers' group-offload hooks on the denoiser and the encoders,
and never changes what a render computes.

On a CPU worker offloading is a no-op (with one warning); the tests that need the hooks on a CPU
apply them with the CPU as the "onload" device, where diffusers' hooks run the same code path as
on a GPU but move nothing. ``tests/gpu/test_gpu_render.py`` checks bytes and memory on a card.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import dask.config
import pytest
import torch
from conftest import assert_renders_identical, tiny_spec

import supergen_dask as sd
from pipelines import base as pipelines_base
from pipelines import load_backend
from pipelines.base import OFFLOAD_MODES, is_offloaded, offload_module
from supergen_dask import config, worker_models
from supergen_dask.cli import main


def _hook(module: torch.nn.Module):
    """The group-offloading hook diffusers registers on a module (None without one)."""
    registry = getattr(module, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook("group_offloading")


# -- the setting ----------------------------------------------------------------------------------
def test_the_setting_defaults_to_none_and_is_checked():
    assert config.get("worker.offload") == "none" and worker_models.offload_setting() == "none"
    for value, mode in (("block", "block"), ("leaf", "leaf"), (None, "none")):
        with dask.config.set({"supergen.worker.offload": value}):
            assert worker_models.offload_setting() == mode
    for bad in ("blocks", "true", 1):
        with dask.config.set({"supergen.worker.offload": bad}):
            with pytest.raises(ValueError, match=r"supergen.worker.offload must be one of none, block, leaf"):
                worker_models.offload_setting()
    with pytest.raises(ValueError, match="offload must be one of"):
        load_backend("tiny-random-wan", offload="all")
    assert OFFLOAD_MODES == ("none", "block", "leaf")


def test_cli_refuses_bad_offload_values_before_any_work(tmp_path, capsys):
    out = tmp_path / "r"
    with pytest.raises(SystemExit) as exit_info:
        main(["render", "--prompt", "x", "--output-dir", str(out), "--offload", "blocks"])
    assert exit_info.value.code == 2
    assert "--offload: invalid choice: 'blocks'" in capsys.readouterr().err
    # a bad configured value (YAML, DASK_SUPERGEN__WORKER__OFFLOAD) is refused by the command too
    with dask.config.set({"supergen.worker.offload": "fast"}):
        assert main(["render", "--prompt", "x", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: supergen.worker.offload must be one of none, block, leaf; got 'fast'"
    # workers of an existing scheduler take their own configuration: refused, nothing contacted
    assert main(["render", "--prompt", "x", "--address", "tcp://127.0.0.1:9", "--offload", "block"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --offload applies to the workers this command starts") and "\n" not in err
    assert "DASK_SUPERGEN__WORKER__OFFLOAD=block" in err
    assert not out.exists()


def test_cli_offload_reaches_the_worker_processes_it_starts(tmp_path, monkeypatch, capsys):
    """``--offload`` is set while the CLI's local cluster starts, so its worker processes (which
    copy the parent's dask config) see it; the setting is this run's only."""
    seen = {}

    def fake_run_render(plan, render_dir, client, **kw):
        seen.update(client.run(config.get, "worker.offload"))
        return SimpleNamespace(
            video_path=Path(render_dir) / "video.mp4", store_path=Path(render_dir) / "render.zarr"
        )

    monkeypatch.setattr("supergen_dask.graph.run_render", fake_run_render)
    out = tmp_path / "r"
    code = main(["render", "--prompt", "x", "--output-dir", str(out), "--workers", "1", "--offload", "leaf"])
    assert code == 0, capsys.readouterr().err
    assert len(seen) == 1 and set(seen.values()) == {"leaf"}, seen
    assert config.get("worker.offload") == "none"  # not left behind in this process


# -- where the hooks go ---------------------------------------------------------------------------
def test_cpu_workers_ignore_offload_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(worker_models, "_OFFLOAD_WARNED", False)
    caplog.set_level(logging.WARNING, logger="supergen_dask.worker_models")
    with dask.config.set({"supergen.device": "cpu", "supergen.worker.offload": "block"}):
        first = worker_models.get_backend("tiny-random-wan", "float32")
        again = worker_models.get_backend("tiny-random-wan", "float32")
    assert first is again and first.offload == "none" and not is_offloaded(first.transformer)
    warnings = [r for r in caplog.records if "has no effect on a CPU worker" in r.getMessage()]
    assert len(warnings) == 1, caplog.records
    held = {"model": "tiny-random-wan", "dtype": "float32", "device": "cpu", "offload": "none"}
    assert {**held, "attention": None, "compile": False} in worker_models.resident()


@pytest.mark.parametrize("mode", ["block", "leaf"])
def test_offloaded_components_carry_the_hooks_and_compute_the_same(mode, monkeypatch):
    """The toy (a Wan directory: transformer, VAE, UMT5 text encoder, loaded by the family's own
    loaders) with offloading on a CPU "onload" device: the denoiser and the text encoder get
    diffusers' hooks, the VAE does not, and prompt embeddings and predictions are bit-identical."""
    placed = []

    def spy(module, device, how):
        placed.append(type(module).__name__)
        return offload_module(module, device, how)

    monkeypatch.setattr(pipelines_base, "offload_module", spy)
    plain = load_backend("toy-wan")
    offloaded = load_backend("toy-wan", offload=mode)
    assert offloaded.offload == mode
    embeds = [b.encode_prompt("a red circle moving right", "") for b in (plain, offloaded)]
    assert all(torch.equal(a, b) for a, b in zip(*embeds, strict=True))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, plain.info.latent_channels, 3, 8, 8, generator=g)
    t = torch.tensor([700.0, 700.0])
    e = torch.stack([embeds[0][0], embeds[0][1]])
    assert torch.equal(plain.predict(x, t, e), offloaded.predict(x, t, e))

    hook = _hook(offloaded.transformer)
    assert hook is not None and hook.config.onload_device == torch.device("cpu")
    assert hook.config.offload_type.value == ("block_level" if mode == "block" else "leaf_level")
    if mode == "block":  # one block per group
        assert all(_hook(block).group.modules == [block] for block in offloaded.transformer.blocks)
    assert _hook(plain.transformer) is None
    assert not is_offloaded(offloaded.vae)
    # UMT5 keeps its blocks under `encoder.block`: offloaded per layer in either mode
    assert placed == ["UMT5EncoderModel", "WanTransformer3DModel"], placed


def test_a_forward_that_raises_releases_the_module():
    """Forwards of an offloaded module are serialised (its groups are shared state); a forward
    that fails must not leave it locked for the next task."""
    backend = load_backend("tiny-random-wan", offload="block")
    model = backend.transformer
    with pytest.raises(RuntimeError):  # 3 input channels where the model takes 16
        model(
            hidden_states=torch.zeros(1, 3, 1, 4, 4),
            timestep=torch.zeros(1),
            encoder_hidden_states=torch.zeros(1, 4, 32),
        )
    done = threading.Event()

    def call():
        backend.predict(torch.zeros(1, 16, 1, 4, 4), torch.tensor([10.0]), torch.zeros(1, 4, 32))
        done.set()

    threading.Thread(target=call, daemon=True).start()
    assert done.wait(20), "the offloaded transformer stayed locked after a failed forward"


def test_a_render_with_offloaded_weights_has_the_same_bytes(tmp_path, client, monkeypatch):
    """End to end through the workers (in-process, so the CPU no-op can be lifted here): the
    backend a worker loads carries the hooks, and the render's bytes are those of a plain one."""
    monkeypatch.setattr(worker_models, "_effective_offload", lambda offload, device: offload)
    spec = tiny_spec(num_inference_steps=4, refine_steps=3)
    plain = sd.render(spec, output_dir=tmp_path / "plain", client=client, progress=False)
    with dask.config.set({"supergen.worker.offload": "block"}):
        offloaded = sd.render(spec, output_dir=tmp_path / "block", client=client, progress=False)
        loads = worker_models.load_count()
        backend = worker_models.get_backend(spec.model, "float32")  # the workers' (same process)
        assert worker_models.load_count() == loads  # loaded by the render's tasks, not here
    assert backend.offload == "block" and _hook(backend.transformer) is not None
    held = {"model": spec.model, "dtype": "float32", "device": "cpu", "offload": "block"}
    assert {**held, "attention": None, "compile": False} in worker_models.resident()
    assert offloaded.plan.spec.token() == plain.plan.spec.token()  # not part of the render's identity
    assert_renders_identical(plain.render_dir, offloaded.render_dir)


@pytest.mark.parametrize(
    "key, bad, match",
    [
        ("offload", "fast", "supergen.worker.offload must be one of none, block, leaf"),
        ("attention", "fastest", "supergen.worker.attention: unknown attention backend"),
    ],
)
def test_python_api_refuses_bad_worker_settings_before_the_store_is_made(tmp_path, client, key, bad, match):
    with dask.config.set({f"supergen.worker.{key}": bad}), pytest.raises(ValueError, match=match):
        sd.render(tiny_spec(), output_dir=tmp_path / "r", client=client, progress=False)
    assert not (tmp_path / "r").exists()


def test_the_text_encoders_modules_are_known_and_parking_is_a_no_op_on_the_cpu():
    backend = load_backend("toy-wan")
    before = backend.encode_prompt("a red circle moving right")
    # what park would move off a GPU: the modules the text component placed as it loaded
    assert [type(m).__name__ for m in backend._placed["text"]] == ["UMT5EncoderModel"]
    assert backend.park("text") is False and not backend._parked  # CPU memory already
    assert backend.park("transformer") is False  # not loaded
    after = backend.encode_prompt("a red circle moving right")
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    offloaded = load_backend("toy-wan", offload="block")
    offloaded.encode_prompt("a red circle")
    assert offloaded._placed["text"] == []  # offloaded weights are not parked: they move per forward
