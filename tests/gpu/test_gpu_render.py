"""What only a GPU can show: placement on real cards, bf16 numerics, float16 storage, resume.

Marked ``gpu`` and skipped without CUDA (CI has none). Run them on the lent GPU machine with
``bash scripts/gpu_tests.sh`` (see ``benchmarks/README.md``); the last result is committed in
``tests/gpu/last_result.json``.
"""

from __future__ import annotations

import shutil
import time

import dask.config
import numpy as np
import pytest
import torch
from conftest import assert_renders_identical, store_arrays
from distributed import Client
from gpu_clusters import gpu_client, gpu_clusters, new_gpu_client, render_on  # noqa: F401 (gpu_clusters: a fixture)

import supergen_dask as sd
from storage import RenderStore
from supergen_dask import worker_models
from supergen_dask.cluster import make_cluster

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TINY_BF16 = dict(model="tiny-random-wan", dtype="bfloat16", num_frames=9, guidance_scale=5.0, seed=3)


def _spec(**overrides) -> sd.RenderSpec:
    fields = dict(
        TINY_BF16,
        prompt="a red circle moving right",
        height=128,
        width=192,
        num_inference_steps=8,
        refine_steps=5,
    )
    fields.update(overrides)
    return sd.RenderSpec(**fields)


def _gpus(result) -> dict[str, set[str]]:
    """Physical cards (UUIDs) each kind of GPU task ran on, from the receipts and the tile stats."""
    store = RenderStore.open(str(result.store_path), mode="r")
    names = store.attrs["sessions"][-1]["gpus"]
    refine = {names[str(int(c))] for c in np.unique(store.tile_stats("refine")["gpu"])}
    branches = {r["gpu"] for r in result.receipts if r["task"] == "predict"}
    return {"refine": refine, "sketch_branches": branches}


def test_one_tile_render_equals_the_diffusers_pipeline_in_bf16(tmp_path):
    """A render at the model's native size with no sketch is one tile: its final latents must be
    those of diffusers' own WanPipeline run from the same noise and prompt embeddings."""
    from diffusers import WanPipeline

    spec = _spec(
        height=64,
        width=64,
        num_inference_steps=6,
        refine_steps=6,
        output=sd.OutputSettings(store_dtype="float32"),  # what the pipeline computes, unrounded
    )
    result = render_on(spec, tmp_path / "r", 1)
    plan = result.plan
    assert plan.sketch is None and plan.refine.grid.n_tiles == 1
    store = RenderStore.open(str(result.store_path), mode="r")
    start = torch.from_numpy(store.read_canvas("refine", "start", None)).permute(1, 0, 2, 3)[None]
    ours = torch.from_numpy(store.read_canvas("refine", "latents", plan.refine.last)).permute(1, 0, 2, 3)[
        None
    ]
    neg, pos = (torch.from_numpy(a)[None].cuda() for a in store.read_prompt_embeds())

    backend = worker_models.get_backend(spec.model, spec.dtype)
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=backend.vae,
        transformer=backend.transformer,
        scheduler=plan.scheduler.build(),
    )
    theirs = (
        pipe(
            prompt_embeds=pos.to(torch.bfloat16),
            negative_prompt_embeds=neg.to(torch.bfloat16),
            height=64,
            width=64,
            num_frames=spec.num_frames,
            num_inference_steps=spec.num_inference_steps,
            guidance_scale=spec.guidance_scale,
            latents=start.cuda(),
            output_type="latent",
            return_dict=False,
        )[0]
        .float()
        .cpu()
    )
    rel = float((ours - theirs).norm() / theirs.norm())
    # bf16 forwards: ours runs both guidance branches as one batch of two, diffusers as two
    # batches of one, so the last bits differ and the difference grows over the steps
    assert rel < 2e-2, f"relative L2 difference {rel:.2e}"


def test_two_gpus_are_both_used_and_agree_with_one(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    spec = _spec()
    one = render_on(spec, tmp_path / "one", 1)
    two = render_on(spec, tmp_path / "two", 2)
    used_one, used_two = _gpus(one), _gpus(two)
    assert len(used_one["refine"]) == 1
    assert len(used_two["refine"]) == 2, used_two
    assert len(used_two["sketch_branches"]) == 2, used_two
    a, b = store_arrays(one.store_path), store_arrays(two.store_path)
    worst = max(float(np.nanmax(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if a[k].dtype.kind == "f")
    # the same kernels on two cards of one kind: expected bit-identical; allow bf16 noise if not
    assert worst <= 1e-2, worst
    if worst == 0:
        assert_renders_identical(one.render_dir, two.render_dir)


def test_float16_storage_end_to_end(tmp_path):
    f32 = render_on(_spec(output=sd.OutputSettings(store_dtype="float32")), tmp_path / "f32", 1)
    f16 = render_on(_spec(output=sd.OutputSettings(store_dtype="float16")), tmp_path / "f16", 1)
    s16 = RenderStore.open(str(f16.store_path), mode="r")
    assert s16.array("refine/latents").dtype == np.float16
    last = f32.plan.refine.last
    a = RenderStore.open(str(f32.store_path), mode="r").read_canvas("refine", "latents", last)
    b = s16.read_canvas("refine", "latents", last).astype(np.float32)
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    # float16 rounding of every step's latents (relative 5e-4 each), compounded over 8 steps
    # through a random-weight bf16 model: measured 1.0% on an H200
    assert rel < 3e-2, rel
    assert f16.video_path.stat().st_size > 0


def test_resume_on_gpu_gives_the_same_bytes(tmp_path):
    # Clearing the done markers of the second half stands for a kill halfway through stage 2. A
    # killed render still holds the steps before the kill, which retention frees only once a
    # render finishes: keep them all, or the resume rightly redoes steps from the last kept one.
    spec = _spec(output=sd.OutputSettings(keep_every=1, keep_history=True))
    full = render_on(spec, tmp_path / "full", 1)
    part = tmp_path / "part"
    shutil.copytree(full.render_dir, part)
    store = RenderStore.open(str(part / "render.zarr"))
    half = len(full.plan.refine.steps) // 2
    store.array("refine/done")[half:] = 0  # as if killed halfway through stage 2
    for task in store.layout.tasks:
        if task.startswith(("decode", "encode")):
            store.array("task_done")[store.task_index(task)] = 0
    (part / "video.mp4").unlink()
    resumed = sd.resume(part, client=gpu_client(1), progress=False)
    assert (
        resumed.summary()["tile_tasks_run"]
        == (len(full.plan.refine.steps) - half) * full.plan.refine.grid.n_tiles
    )
    assert_renders_identical(full.render_dir, part)


def test_cache_on_two_gpus_skips_balances_and_agrees_with_one(tmp_path):
    """The residual cache on GPUs: hits stepped on the CPU, model calls on both cards, and the same
    decisions and (within bf16 noise, expected identical) latents as on one card."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    spec = _spec(
        height=256,
        width=256,
        num_inference_steps=14,
        refine_steps=12,
        cache=sd.spec.CacheSettings(enabled=True, threshold=4.0),  # the tiny random Wan's scale
    )
    one = render_on(spec, tmp_path / "one", 1)
    two = render_on(spec, tmp_path / "two", 2)
    computed = [
        RenderStore.open(str(r.store_path), mode="r").tile_stats("refine")["computed"] for r in (one, two)
    ]
    np.testing.assert_array_equal(*computed)
    assert 0 < (computed[0] == 0).sum() < computed[0].size
    calls = {r["gpu"] for r in two.receipts if r["task"] == "denoise" and r["name"].startswith("refine")}
    assert len(calls) == 2, calls
    a, b = store_arrays(one.store_path), store_arrays(two.store_path)
    worst = max(float(np.nanmax(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if a[k].dtype.kind == "f")
    assert worst <= 1e-2, worst


def test_two_gpu_slots_take_turns_on_the_card_and_give_the_same_bytes(tmp_path):
    """``supergen.cluster.gpu-slots: 2``: one dask-cuda worker runs two tile tasks at once, their
    model calls take turns on the card (never two at once), and the bytes are those of one slot."""
    import dask.config

    spec = _spec(height=256, width=256)
    one = render_on(spec, tmp_path / "one", 1)
    with dask.config.set({"supergen.cluster.gpu-slots": 2}):
        client = new_gpu_client(1)
    (resources,) = [w["resources"] for w in client.scheduler_info()["workers"].values()]
    assert resources == {"GPU": 2}
    two = sd.render(spec, output_dir=tmp_path / "two", client=client, progress=False)
    assert_renders_identical(one.render_dir, two.render_dir)
    s = RenderStore.open(str(two.store_path), mode="r").tile_stats("refine")
    turn0 = s["turn_started"].ravel()
    turn1 = turn0 + s["turn_seconds"].ravel()
    landed = turn0 + s["forward_seconds"].ravel()
    order = np.argsort(turn0)
    assert np.all(turn0[order][1:] >= turn1[order][:-1] - 1e-4), "two model calls were queued at once"
    # the card computes them in turn order: each tile's results land before the next tile's
    assert np.all(landed[order][1:] >= landed[order][:-1] - 1e-4)
    assert (s["wait_seconds"] > 0).any()


def test_copies_to_and_from_the_card_do_not_wait_for_it():
    """``supergen_dask.transfer``: with about half a second of work queued on the card, queueing a
    tile's results to the host and its next inputs to the card returns at once; only ``wait``
    waits, and then the values are those of a plain copy.

    Allocating page-locked memory makes CUDA synchronize, so a worker's first tiles wait once
    per buffer size; PyTorch's host allocator then reuses the buffers (a worker's tiles repeat
    the same sizes). The first run of this test on two H200s timed that first allocation (0.59 s
    queued behind the 0.59 s of work); the buffers are now allocated before the timed part."""
    from supergen_dask import transfer

    x = torch.randn(16, 21, 60, 80, device="cuda")
    inputs = np.random.default_rng(0).standard_normal((21, 16, 60, 80)).astype(np.float16)

    def queue():
        return transfer.HostCopy({"x": x.half()}, {"finite": torch.isfinite(x).all()}), transfer.to_device(
            inputs, "cuda"
        )

    first, _ = queue()
    first.wait()
    del first
    torch.cuda.synchronize()  # the page-locked buffers are back in the allocator's cache
    torch.cuda._sleep(int(1e9))  # ~0.5 s of the card's clock cycles, queued before the copies
    t0 = time.perf_counter()
    copy, up = queue()
    queued = time.perf_counter() - t0
    arrays, checks = copy.wait()
    waited = time.perf_counter() - t0
    assert queued < 0.05 and waited > 0.2, (queued, waited)
    np.testing.assert_array_equal(arrays["x"], x.half().cpu().numpy())
    assert bool(checks["finite"])
    np.testing.assert_array_equal(up.cpu().numpy(), inputs.astype(np.float32))


def _weight_bytes(model: torch.nn.Module, prefix: str = "") -> int:
    """Bytes of the weights of ``model`` whose names start with ``prefix``, as ``pipelines.base.cast_weights``
    places them in bfloat16: the modules the model keeps in float32 in float32."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    total = 0
    for name, p in model.named_parameters():
        if name.startswith(prefix):
            fp32 = any(k in name.split(".")[:-1] for k in keep)
            total += p.numel() * (4 if fp32 else 2)
    return total


def test_offloaded_weights_give_the_same_bytes_in_less_gpu_memory(tmp_path):
    """``supergen.worker.offload`` on dask-cuda workers (set while their cluster starts, as the
    CLI's ``--offload`` does): the 1.3B-shaped Wan transformer and a tiny Wan directory (whose
    UMT5 text encoder is offloaded too) render the same bytes as without offloading, and the
    block mode's peak GPU memory is lower by the transformer's weights less what group offloading
    keeps on the card during a forward: the embeddings and output layers (one group) and two blocks
    (the one computing and the next, prefetched on a side stream).

    Bit-identical, not merely close: offloading only changes where the weights wait between
    forwards; every forward runs the same kernels on the same weights on the same card."""
    from diffusers import WanTransformer3DModel

    from pipelines.wan import WAN_1_3B_TRANSFORMER_CONFIG, save_tiny_pipeline

    big = sd.RenderSpec(
        prompt="a red circle moving right",
        model="random-wan2.1-1.3b-shape",
        dtype="bfloat16",
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=3,
        refine_steps=3,  # one tile, no sketch: the weights dominate the memory
        guidance_scale=5.0,
        seed=3,
    )
    tiny = _spec(model=str(save_tiny_pipeline(tmp_path / "tiny-wan")))  # sketch + 2x3 tiles
    runs: dict[str, dict] = {}
    for mode in ("none", "block", "leaf"):
        with (
            dask.config.set({"supergen.worker.offload": mode}),
            make_cluster(n_workers=1) as cluster,
            Client(cluster) as client,
        ):
            out = tmp_path / mode
            small = sd.render(tiny, output_dir=out / "tiny", client=client, progress=False)
            sd.render(big, output_dir=out / "load", client=client, progress=False)  # loads, draws
            client.run(torch.cuda.reset_peak_memory_stats)
            result = sd.render(big, output_dir=out / "big", client=client, progress=False)
            (peak,) = client.run(torch.cuda.max_memory_allocated).values()
            (after,) = client.run(torch.cuda.memory_allocated).values()
            (held,) = client.run(worker_models.resident).values()
        assert {h["offload"] for h in held} == {mode}, held  # the setting reached the worker
        assert {h["device"] for h in held} == {"cuda"}, held
        runs[mode] = dict(tiny=small.render_dir, big=result.render_dir, peak=peak, after=after)

    for mode in ("block", "leaf"):
        assert_renders_identical(runs["none"]["tiny"], runs[mode]["tiny"])
        assert_renders_identical(runs["none"]["big"], runs[mode]["big"])

    with torch.device("meta"):
        model = WanTransformer3DModel(**WAN_1_3B_TRANSFORMER_CONFIG)
    weights = _weight_bytes(model)
    block = max(_weight_bytes(model, f"blocks.{i}.") for i in range(len(model.blocks)))  # 93 MB
    others = weights - _weight_bytes(model, "blocks.")  # embeddings, output layers: 58 MB
    mib = 2**20
    saved = runs["none"]["peak"] - runs["block"]["peak"]
    expected = weights - others - 2 * block  # 2.6 GB of the 2.8 GB
    assert saved >= expected - 32 * mib, (
        f"peak {runs['none']['peak'] / mib:.0f} MiB without offloading, {runs['block']['peak'] / mib:.0f} "
        f"MiB with: {saved / mib:.0f} MiB saved, expected >= {expected / mib:.0f} MiB"
    )
    # between forwards no weight of the transformer is on the card
    assert runs["none"]["after"] - runs["block"]["after"] >= weights - 32 * mib
    # per layer holds less than per block (the largest layer, an FFN matrix: ~28 MB)
    assert runs["leaf"]["peak"] <= runs["block"]["peak"], runs


def _text_encoder_places() -> list[str]:
    """On a worker: where each backend's text encoder weights are, and whether it is parked."""
    from supergen_dask import worker_models as wm

    out = []
    for backend in wm._BACKENDS.values():
        for m in getattr(backend, "_placed", {}).get("text", ()):
            devices = {p.device.type for p in m.parameters()}
            out.append(f"{'parked' if 'text' in backend._parked else 'resident'}:{','.join(sorted(devices))}")
    return out


def test_the_text_encoder_leaves_the_card_after_the_prompt_and_comes_back_for_the_next(tmp_path):
    """``supergen.worker.keep-text-encoder: false`` (the default): once a render's prompt is encoded
    the worker's UMT5 is in CPU memory through the denoising; the next render's prompt brings it
    back, and its embeddings are those of an encoder that never moved."""
    from pipelines.wan import save_tiny_pipeline

    model = str(save_tiny_pipeline(tmp_path / "tiny-wan"))
    first = render_on(_spec(model=model), tmp_path / "a", 1)
    assert any(r.get("parked_text_encoder") for r in first.receipts if r["task"] == "prompt")
    assert set().union(*(set(v) for v in gpu_client(1).run(_text_encoder_places).values())) == {"parked:cpu"}
    second = render_on(_spec(model=model, prompt="a blue square moving left"), tmp_path / "b", 1)
    fresh = worker_models.get_backend(model, "bfloat16")  # this process: loaded on the card, never parked
    pos, neg = fresh.encode_prompt("a blue square moving left", "")
    stored_neg, stored_pos = RenderStore.open(str(second.store_path), mode="r").read_prompt_embeds()
    np.testing.assert_array_equal(stored_pos, pos.numpy())
    np.testing.assert_array_equal(stored_neg, neg.numpy())
