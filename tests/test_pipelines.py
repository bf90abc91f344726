"""Model backends: built-in presets, loading a diffusers directory from disk, the protocol."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_spec

import supergen_dask as sd
from pipelines import UnknownModelError, available_models, load_backend, model_info
from pipelines.wan import save_tiny_pipeline


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-wan")


def test_presets_are_listed_and_described():
    assert {"tiny-random-wan", "random-wan2.1-1.3b-shape"} <= set(available_models())
    info = model_info("random-wan2.1-1.3b-shape")
    assert (info.native_width, info.native_height, info.native_frames) == (832, 480, 81)
    assert info.text_embed_dim == 4096 and info.text_tokens == 512
    assert "random" in info.description


def test_protocol_shapes_on_the_tiny_model():
    b = load_backend("tiny-random-wan")
    pos, neg = b.encode_prompt("a red circle", "")
    assert pos.shape == (16, 32) and not torch.equal(pos, neg)
    x = torch.randn(2, 16, 3, 8, 12)
    out = b.predict(x, torch.tensor([500.0, 500.0]), torch.stack([neg, pos]))
    assert out.shape == x.shape and out.dtype == torch.float32
    video = b.vae_decode(torch.randn(1, 16, 3, 8, 8))
    assert video.shape == (1, 3, 9, 64, 64) and video.abs().max() <= 1
    z = b.vae_encode(video)
    assert z.shape == (1, 16, 3, 8, 8)


def test_random_weights_are_the_same_in_every_process():
    a, b = load_backend("tiny-random-wan"), load_backend("tiny-random-wan")
    for (n, p), (_, q) in zip(
        a.transformer.named_parameters(), b.transformer.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), n


def test_directory_info_reads_configs_without_weights(tiny_dir):
    info = model_info(str(tiny_dir))
    assert info.family == "wan" and info.scheduler_class == "UniPCMultistepScheduler"
    assert (info.native_height, info.native_width, info.text_tokens) == (64, 64, 16)


def test_loading_from_disk_uses_the_saved_weights_and_text_encoder(tiny_dir):
    b = load_backend(str(tiny_dir))
    pos, neg = b.encode_prompt("a red circle moving right", "")
    assert pos.shape == (16, 32)
    assert pos[:6].abs().sum() > 0 and torch.all(pos[6:] == 0)  # padded past the prompt, as Wan does
    from diffusers import WanTransformer3DModel

    direct = WanTransformer3DModel.from_pretrained(str(tiny_dir), subfolder="transformer")
    for (n, p), (_, q) in zip(b.transformer.named_parameters(), direct.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_render_with_a_model_directory(tmp_path, tiny_dir, client):
    result = sd.render(
        tiny_spec(model=str(tiny_dir)), output_dir=tmp_path / "r", client=client, progress=False
    )
    assert result.video_path.exists()


def test_unknown_models_and_pipelines_are_refused(tmp_path):
    with pytest.raises(UnknownModelError, match="unknown model"):
        model_info("nope")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UnknownModelError, match="StableDiffusionPipeline"):
        model_info(str(tmp_path / "m"))


def test_components_load_one_at_a_time_so_process_wide_settings_survive():
    """Loading sets process-wide state and puts it back after (transformers' ``from_pretrained``
    sets torch's default dtype in ``local_torch_dtype``). Two components of two backends asked for
    at once in two threads load one after the other, and the default dtype is float32 after."""
    import threading
    import time

    from transformers.modeling_utils import local_torch_dtype

    from pipelines.base import LazyBackend

    spans: dict[str, tuple[float, float]] = {}

    def loader(name: str, seconds: float):
        def load():
            t0 = time.perf_counter()
            with local_torch_dtype(torch.bfloat16):  # what from_pretrained(dtype=bfloat16) does
                time.sleep(seconds)
                layer = torch.nn.Linear(2, 2)
            spans[name] = (t0, time.perf_counter())
            return layer

        return load

    info = model_info("tiny-random-wan")
    text = LazyBackend(info, {"text": loader("text", 0.4)})
    denoiser = LazyBackend(info, {"transformer": loader("transformer", 0.4)})
    threads = [
        threading.Thread(target=text._get, args=("text",)),
        threading.Thread(target=denoiser._get, args=("transformer",)),
    ]
    try:
        threads[0].start()
        time.sleep(0.1)  # the second load starts while the first is under way
        threads[1].start()
        for t in threads:
            t.join()
        default = torch.get_default_dtype()
    finally:
        torch.set_default_dtype(torch.float32)  # never leave a broken default to later tests
    (a0, a1), (b0, b1) = sorted(spans.values())
    assert a1 <= b0, spans
    assert default == torch.float32
    assert text._get("text").weight.dtype == denoiser._get("transformer").weight.dtype == torch.bfloat16


def _loading_in_bfloat16(started, release=None, seconds: float = 0.0):
    """A component loader that sets torch's default dtype to bfloat16 while it runs, as
    ``from_pretrained(dtype=torch.bfloat16)`` does, and says when it has begun."""
    import time

    from transformers.modeling_utils import local_torch_dtype

    def load():
        with local_torch_dtype(torch.bfloat16):
            started.set()
            if release is not None:
                release.wait(10)
            time.sleep(seconds)
            return torch.nn.Linear(2, 2)

    return load


def test_a_model_call_waits_for_another_threads_load_to_end():
    """A prompt encoded while another thread loads (torch's default dtype bfloat16 meanwhile, as
    on a worker loading its transformer for the warm-up) gives the embeddings it gives with no
    load under way: the tiny Wan's differ by up to 0.004 when encoded during the load."""
    import threading

    from pipelines.base import LazyBackend

    wan = load_backend("tiny-random-wan")
    reference = wan.encode_prompt("a red circle moving right", "")
    started = threading.Event()
    other = LazyBackend(
        model_info("tiny-random-wan"), {"transformer": _loading_in_bfloat16(started, seconds=0.5)}
    )
    loader = threading.Thread(target=other._get, args=("transformer",))
    try:
        loader.start()
        assert started.wait(10)
        during = wan.encode_prompt("a red circle moving right", "")  # while the other loads
        loader.join()
    finally:
        torch.set_default_dtype(torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(during, reference, strict=True))


def test_a_model_call_runs_again_when_another_thread_began_a_load_meanwhile():
    """A model call during which another thread began loading (so part of it may have run with a
    bfloat16 default) runs again once that load has ended, and returns the second result."""
    import threading

    from pipelines.base import LazyBackend, VideoBackend

    started, release = threading.Event(), threading.Event()
    other = LazyBackend(
        model_info("tiny-random-wan"), {"transformer": _loading_in_bfloat16(started, release)}
    )
    calls = []

    class Backend(VideoBackend):
        def vae_decode(self, latents):
            if not calls:  # the first run: another thread begins a load in the middle of it
                threading.Thread(target=other._get, args=("transformer",)).start()
                assert started.wait(10)
            made = torch.tensor([0.1])  # a tensor made without a dtype, as VAEs do
            calls.append(made.dtype)
            release.set()
            return made.float() * latents

    try:
        out = Backend(model_info("tiny-random-wan")).vae_decode(torch.ones(1))
    finally:
        release.set()
        torch.set_default_dtype(torch.float32)
    assert calls == [torch.bfloat16, torch.float32]
    assert out.dtype == torch.float32 and torch.equal(out, torch.tensor([0.1]))
