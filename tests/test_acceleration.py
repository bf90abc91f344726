"""Attention kernels and torch.compile for a loaded denoiser (``pipelines.acceleration``)."""

from __future__ import annotations

import pytest
import torch

from pipelines import load_backend
from pipelines.acceleration import NATIVE_ATTENTION, accelerate, attention_backends, check_attention


def _forward(backend) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 8, 8, generator=g)
    emb = torch.randn(2, backend.info.text_tokens, backend.info.text_embed_dim, generator=g)
    return backend.predict(x, torch.tensor([500.0, 500.0]), emb)


def test_pytorch_attention_kernels_are_known_and_others_refused():
    assert set(NATIVE_ATTENTION) <= set(attention_backends())
    assert check_attention(None) is None and check_attention("_native_cudnn") == "_native_cudnn"
    with pytest.raises(ValueError, match="unknown attention backend 'fastest'; PyTorch's own: native"):
        check_attention("fastest")


def test_an_attention_backend_reaches_every_attention_module_and_keeps_the_result():
    backend = load_backend("tiny-random-wan", device="cpu", dtype=torch.float32)
    reference = _forward(backend)
    accelerate(backend.transformer, attention="_native_math")
    backends = {
        str(getattr(m.processor, "_attention_backend", None))
        for m in backend.transformer.modules()
        if hasattr(m, "processor")
    }
    assert backends == {"_native_math"} or backends == {"AttentionBackendName._NATIVE_MATH"}, backends
    torch.testing.assert_close(_forward(backend), reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention backend"):
        accelerate(backend.transformer, attention="fastest")


def test_compile_wraps_the_forward_lazily():
    backend = load_backend("tiny-random-wan", device="cpu", dtype=torch.float32)
    module = backend.transformer
    assert getattr(module, "_compiled_call_impl", None) is None
    accelerate(module, compile="max-autotune-no-cudagraphs")
    # compiled at the first forward of each shape (seconds on a CPU, so not run here)
    assert module._compiled_call_impl is not None


def test_worker_settings_reach_the_denoiser_as_it_loads(monkeypatch):
    import dask.config

    from supergen_dask import worker_models

    monkeypatch.setattr(worker_models, "_BACKENDS", {})
    with dask.config.set({"supergen.worker.attention": "_native_math", "supergen.worker.compile": False}):
        backend = worker_models.get_backend("tiny-random-wan", "float32")
        assert backend.attention == "_native_math"
        processors = [m.processor for m in backend.transformer.modules() if hasattr(m, "processor")]
        assert processors and all("_native_math" in str(p._attention_backend).lower() for p in processors)
        assert {"attention": "_native_math", "compile": False}.items() <= worker_models.resident()[0].items()
    for key, bad, match in (
        ("attention", "fastest", "supergen.worker.attention: unknown attention backend 'fastest'"),
        ("compile", 3, "supergen.worker.compile must be true, false or a torch.compile mode"),
    ):
        with dask.config.set({f"supergen.worker.{key}": bad}), pytest.raises(ValueError, match=match):
            worker_models.get_backend("tiny-random-wan", "float32")


def test_setting_one_models_backend_leaves_other_models_alone():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    before = _AttentionBackendRegistry.get_active_backend()[0]
    backend = load_backend("tiny-random-wan", device="cpu", dtype=torch.float32)
    accelerate(backend.transformer, attention="_native_math")
    # diffusers' set_attention_backend makes it the process's default too; a render of another
    # model in this process (a thread-cluster worker) would silently compute differently
    assert _AttentionBackendRegistry.get_active_backend()[0] == before
