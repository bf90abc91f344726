"""Orchestration overhead on a GPU: seconds per tile task in a real render vs the same tile's
forward in a bare in-process loop on the same card.

Runs one render (Wan2.1-1.3B-shaped random-weight transformer, bf16) through the whole Dask + Zarr
path on a dask-cuda cluster, reads the per-tile timings the tasks wrote to the store, then times
the identical tile forward (CFG batch of 2, same shapes, same model preset) in a plain loop after
the render, when the GPU is otherwise idle. Writes a JSON report with the machine it ran on.

    python benchmarks/tile_overhead.py --out benchmarks/results/tile_overhead.json

Never run this on a CPU and call it a GPU figure: it refuses to run without CUDA.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def wan_forward_flops(tokens: int, layers=30, dim=1536, ffn=8960, text=512) -> float:
    """Multiply-adds x2 of one Wan transformer forward for one sample (the dominant terms)."""
    per_layer = (
        4 * tokens * dim * dim * 2  # self-attention q, k, v, o
        + 2 * tokens * tokens * dim * 2  # QK^T and AV
        + 2 * tokens * dim * dim * 2
        + 2 * text * dim * dim * 2  # cross-attention projections
        + 2 * tokens * text * dim * 2  # cross-attention
        + 2 * tokens * dim * ffn * 2  # feed-forward
    )
    return layers * per_layer


def _guided(predict, x, t, emb):
    """A tile's forward as a task runs it: the guidance batch of two, combined."""
    u, c = predict(x, t, emb).chunk(2)
    return u + 5.0 * (c - u)


def bare_forward_seconds(
    model: str,
    dtype: torch.dtype,
    shape,
    text_tokens: int,
    text_dim: int,
    reps: int,
    variant: str = "default",
) -> tuple[list[float], float]:
    """CUDA-event times of ``reps`` guided tile forwards (a batch of two, as a task runs them) in a
    plain loop, and the seconds of the first call (compilation, for a compiled variant).

    ``variant``: ``default`` (the model as a worker loads it), an attention backend name
    (``pipelines.acceleration``), either with ``+compile``."""
    from pipelines import load_backend
    from pipelines.acceleration import accelerate

    backend = load_backend(model, device="cuda", dtype=dtype)
    backend.load_transformer()
    attention, _, compiled = variant.partition("+")
    accelerate(
        backend.transformer,
        attention=None if attention == "default" else attention,
        compile=compiled == "compile",
    )
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, *shape, device="cuda", generator=g)
    emb = torch.randn(2, text_tokens, text_dim, device="cuda", generator=g)
    t = torch.tensor([700.0, 700.0], device="cuda")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from forward_timing import time_forwards

    times, first = time_forwards(functools.partial(_guided, backend.predict, x, t, emb), reps, warmup=2)
    del backend
    torch.cuda.empty_cache()
    return times, first


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random-wan2.1-1.3b-shape")
    p.add_argument("--height", type=int, default=1440)
    p.add_argument("--width", type=int, default=2560)
    p.add_argument("--num-frames", type=int, default=81)
    p.add_argument("--num-inference-steps", type=int, default=8)
    p.add_argument("--refine-steps", type=int, default=3)
    p.add_argument("--bare-reps", type=int, default=10)
    p.add_argument(
        "--variants",
        nargs="*",
        default=[
            "_native_cudnn",
            "_native_flash",
            "_native_efficient",
            "default+compile",
            "_native_cudnn+compile",
        ],
        help="bare forwards also timed with these attention backends (pipelines.acceleration), '+compile' for torch.compile",
    )
    p.add_argument(
        "--gpu-slots",
        type=int,
        nargs="+",
        default=[1, 2],
        help="one render per value: tile tasks each worker runs at once (supergen.cluster.gpu-slots)",
    )
    p.add_argument(
        "--step-after-turn",
        action="store_true",
        help="queue each tile's scheduler step after its device turn (supergen.worker.step-in-turn: false)",
    )
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark only runs on a GPU", file=sys.stderr)
        return 2

    import supergen_dask as sd

    spec = sd.RenderSpec(
        prompt="a red circle moving right on a blue background",
        model=args.model,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        num_inference_steps=args.num_inference_steps,
        refine_steps=args.refine_steps,
        guidance_scale=5.0,
        dtype="bfloat16",
    )
    plan = sd.plan_render(spec)
    print(plan.summary(), flush=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="supergen-bench-"))
    runs, machine_extra = {}, {}
    for slots in args.gpu_slots:
        print(f"render with {slots} GPU slot(s) per worker", flush=True)
        runs[str(slots)], machine_extra = _render_run(
            plan, workdir / f"render-{slots}", slots, step_in_turn=not args.step_after_turn
        )

    g = plan.refine.grid
    tile_shape = (plan.model.latent_channels, plan.latent_frames, g.tile_h, g.tile_w)
    flops = 2 * wan_forward_flops(plan.latent_frames * (g.tile_h // 2) * (g.tile_w // 2))  # CFG: 2
    variants = {}
    for variant in ["default", *args.variants]:
        print(f"bare forward: {variant}", flush=True)
        try:
            times, first = bare_forward_seconds(
                args.model,
                torch.bfloat16,
                tile_shape,
                plan.model.text_tokens,
                plan.model.text_embed_dim,
                args.bare_reps,
                variant,
            )
        except Exception as exc:  # noqa: BLE001 - a kernel this card or build lacks: say which
            variants[variant] = {"error": repr(exc)}
            continue
        med = statistics.median(times)
        variants[variant] = {
            "seconds_median": med,
            "seconds_all": times,
            "first_call_seconds": first,
            "tflops_per_second": flops / med / 1e12,
        }
    bare = variants["default"]["seconds_all"]
    bare_med = variants["default"]["seconds_median"]
    tokens = plan.latent_frames * (g.tile_h // 2) * (g.tile_w // 2)
    for r in runs.values():
        r["bare_forward_seconds_median"] = bare_med
        r["ratio_task_to_bare"] = r["task_seconds_median"] / bare_med
        r["ratio_stage2_per_tile_to_bare"] = r["stage2_seconds_per_tile"] / bare_med
        # the device turn: the model call, the scheduler step and the copies back to the host
        r["forward_in_task_vs_bare"] = r["task_forward_seconds_median"] / bare_med

    report = {
        "benchmark": "tile_overhead",
        "machine": {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_count": torch.cuda.device_count(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            **machine_extra,
        },
        "versions": [r.pop("versions") for r in runs.values()][0],
        "render": {
            "model": args.model,
            "size": f"{args.width}x{args.height}",
            "num_frames": args.num_frames,
            "num_inference_steps": args.num_inference_steps,
            "refine_steps": args.refine_steps,
            "grid": f"{g.rows}x{g.cols} tiles of {g.tile_h}x{g.tile_w} latent ({tokens} tokens)",
            "tile_bytes_float32": int(np.prod(tile_shape)) * 4,
            "dtype": "bfloat16",
            "summary": plan.summary(),
        },
        "bare": {
            "bare_forward_seconds_median": bare_med,
            "bare_forward_seconds_all": bare,
            "tflops_per_second_bare": flops / bare_med / 1e12,
            # the same forward with other attention kernels and/or torch.compile (--variants)
            "variants": variants,
        },
        # one render per value of --gpu-slots (supergen.cluster.gpu-slots), keyed by it
        "results": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True))
    for name, v in variants.items():
        print(json.dumps({name: {k: x for k, x in v.items() if k != "seconds_all"}}))
    for slots, r in runs.items():
        print(json.dumps({f"gpu_slots={slots}": r}, indent=2))
    return 0


def _render_run(plan, out_dir: Path, slots: int, step_in_turn: bool = True) -> tuple[dict, dict]:
    """One render with ``slots`` GPU slots per worker, on a fresh cluster: per-tile timings from
    the store, the stage-2 wall and each worker's peak GPU memory."""
    import dask.config
    from distributed import Client

    import supergen_dask as sd
    from storage import RenderStore

    # the workers the cluster starts take this configuration with them
    with dask.config.set({"supergen.cluster.gpu-slots": slots, "supergen.worker.step-in-turn": step_in_turn}):
        try:
            cluster = sd.make_cluster()  # dask-cuda's LocalCUDACluster: one worker per GPU
            cluster_kind = type(cluster).__name__
        except Exception as exc:  # noqa: BLE001 - record why, then measure on a plain process worker
            if slots != 1:
                raise
            print(f"dask-cuda cluster failed ({exc!r}); using one LocalCluster process worker", flush=True)
            cluster = sd.make_cluster(n_workers=1, processes=True, gpu=False)
            cluster_kind = f"LocalCluster (dask-cuda failed: {exc!r})"
        t0 = time.perf_counter()
        with cluster, Client(cluster) as client:
            result = sd.run_render(plan, out_dir, client, progress=False)
            wall = time.perf_counter() - t0
            peak = client.run(lambda: torch.cuda.max_memory_allocated() / 2**30)
            workers = client.run(lambda: torch.cuda.get_device_name(0))
    store = RenderStore.open(str(result.store_path), mode="r")
    stats = store.tile_stats("refine")
    sk = store.tile_stats("sketch") if plan.sketch is not None else None
    done = store.done_mask("refine")
    assert done.all()
    n_tiles = int(done.size)
    started, seconds = stats["started"].ravel(), stats["seconds"].ravel()
    stage2_wall = float((started + seconds).max() - started.min())
    fields = ("seconds", "read_seconds", "wait_seconds", "forward_seconds", "write_seconds")
    by = {k: stats[k].ravel() for k in fields if k in stats}
    receipts = [
        r
        for r in result.receipts
        if r.get("task") in ("upscale", "encode", "prompt", "init")
        or str(r.get("task", "")).startswith("decode")
    ]

    def med(v):
        return float(np.median(v))

    run = {
        "gpu_slots": slots,
        "step_in_turn": step_in_turn,
        "render_wall_seconds": round(wall, 3),
        "refine_tile_tasks": n_tiles,
        **{f"task_{k}_median": med(v) for k, v in by.items()},
        "stage2_wall_seconds": round(stage2_wall, 3),
        "stage2_seconds_per_tile": stage2_wall / n_tiles,
        "sketch_step_seconds_median": None if sk is None else med(sk["seconds"].ravel()),
        "peak_gpu_memory_gib_per_worker": peak,
        "other_tasks_seconds": {r.get("name"): round(r["seconds"], 3) for r in receipts},
        "versions": store.attrs["versions"],
    }
    return run, {"worker_gpus": sorted(set(workers.values())), "cluster": cluster_kind}


if __name__ == "__main__":
    sys.exit(main())
