"""Real-size model families on one GPU: seconds per tile task of a 2K render next to the bare
forward of the same tile, and a worker's peak GPU memory next to a native-size generation's.

For each preset of ``--models`` (random weights in the exact shapes of Wan2.1-T2V-1.3B,
CogVideoX1.5-5B and HunyuanVideo 13B; bf16; each model's own default guidance, so CogVideoX and
Wan run classifier-free guidance as a batch of two and HunyuanVideo, guidance-distilled, a batch
of one):

1. a 2560x1440 render through the whole Dask + Zarr path on a dask-cuda cluster of ONE worker on
   ONE GPU, with a short schedule (``--num-inference-steps 6 --refine-steps 3``: a native-size
   sketch, then 3 tiled steps of 2x2 720p tiles for CogVideoX and HunyuanVideo); per-tile timings
   from the store's tile stats, the worker's peak GPU memory (``torch.cuda.max_memory_allocated``
   through ``client.run``);
2. on the same worker, its peak reset, a native-size render of the same model and frames with
   every step on one tile (no sketch): the "native generation" the 2K peak is compared with;
3. once the cluster is gone, the bare forward of the 2K render's tile (same shape, same guidance
   batch, the prompt's own embeddings) timed with CUDA events in this process.

Frames per model (``FRAMES``) are chosen so each model's whole run fits about 3 minutes on one H200
(HunyuanVideo at its native 129 frames would take ~9 minutes of denoising alone at 2K, by the
pre-flight estimate); the JSON says which were used and why. Progress lines go to stdout and
``--log``; one JSON to ``--out`` with the machine. Refuses to run without CUDA (exit 2).

    python benchmarks/families.py --out benchmarks/results/families-h200.json --log families-h200.log
    python benchmarks/families.py --models random-hunyuanvideo-shape --out hy.json  # one model per call
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
from typing import Any

import dask.config

DEFAULT_MODELS = ("random-cogvideox1.5-5b-shape", "random-hunyuanvideo-shape", "random-wan2.1-1.3b-shape")

# pixel frames per model, and why: the pre-flight estimate (supergen_dask.gpu_cost, one H200) of
# the denoising of the 2K render (6 steps, k=3) + the native one (6 steps on one tile); the VAE,
# the bare forwards, the cluster's start and the mp4 encode come on top (about a minute)
FRAMES: dict[str, tuple[int, str]] = {
    "random-wan2.1-1.3b-shape": (
        81,
        "native frame count (as tile_overhead.py): ~41 s of 2K + ~8 s native denoising (estimate)",
    ),
    "random-cogvideox1.5-5b-shape": (
        49,
        "81 (native) would be ~120 s of 2K + ~46 s native denoising (estimate); 49 frames "
        "(13 latent frames + the padding frame) ~58 s + ~22 s",
    ),
    "random-hunyuanvideo-shape": (
        33,
        "129 (native) would be ~9 min of 2K + ~3 min native denoising (estimate); 33 frames "
        "(9 latent frames) ~58 s + ~19 s",
    ),
}
PROMPT = "a red circle moving right on a blue background"


class Log:
    """Progress lines, timestamped, to stdout and (appended) to a file."""

    def __init__(self, path: str | None):
        self.file = open(path, "a") if path else None  # noqa: SIM115 - streamed while renders run

    def __call__(self, line: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {line}"
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--height", type=int, default=1440)
    p.add_argument("--width", type=int, default=2560)
    p.add_argument(
        "--frames",
        action="append",
        default=[],
        metavar="MODEL=N",
        help="pixel frames for one model instead of FRAMES' (repeatable)",
    )
    p.add_argument("--num-inference-steps", type=int, default=6)
    p.add_argument("--refine-steps", type=int, default=3)
    p.add_argument("--bare-reps", type=int, default=5)
    p.add_argument("--skip-native", action="store_true", help="no native-size render")
    p.add_argument("--workdir", default=None)
    p.add_argument("--log", default=None, help="append the progress lines here")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    overrides = {}
    for item in args.frames:
        name, sep, n = item.partition("=")
        if not sep or not n.isdigit():
            p.error(f"--frames takes MODEL=N, got {item!r}")
        overrides[name] = int(n)
    unknown = set(overrides) - set(args.models)
    if unknown:
        p.error(f"--frames for models not in --models: {sorted(unknown)}")
    args.frames = overrides
    return args


def model_specs(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The two renders of one model (no GPU, no weights): the 2K render and the native one, their
    plans (limits off, as ``--force``: the benchmark's card is known), the frames and why."""
    import supergen_dask as sd
    from pipelines import model_info

    info = model_info(name)
    if name in args.frames:
        frames, why = args.frames[name], "--frames"
    elif name in FRAMES:
        frames, why = FRAMES[name]
    else:
        frames, why = info.native_frames, "the model's native frame count"
    common = dict(
        prompt=PROMPT,
        model=name,
        num_frames=frames,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=info.default_guidance,
        dtype="bfloat16",
    )
    big = sd.RenderSpec(height=args.height, width=args.width, refine_steps=args.refine_steps, **common)
    native = sd.RenderSpec(
        height=info.native_height,
        width=info.native_width,
        refine_steps=args.num_inference_steps,  # k = every step: no sketch, one tile
        **common,
    )
    with dask.config.set({"supergen.limits.enabled": False}):
        plan, native_plan = sd.plan_render(big), sd.plan_render(native)
    g = plan.refine.grid
    return {
        "model": name,
        "family": info.family,
        "num_frames": frames,
        "frames_why": why,
        "plan": plan,
        "native_plan": native_plan,
        "tile_shape": (plan.refine.channels, plan.refine.latent_frames, g.tile_h, g.tile_w),
        "guidance_batch": 2 if plan.cfg else 1,
    }


def bare_forward(plan, shape, batch: int, reps: int) -> dict[str, Any]:
    """CUDA-event times of ``reps`` tile forwards of ``shape`` and ``batch`` (the guidance batch a
    task runs) with the prompt's own embeddings, after two warm-up calls; and the peak memory."""
    import torch

    from pipelines import load_backend
    from supergen_dask.conditioning import prompt_options

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    backend = load_backend(plan.spec.model, device="cuda", dtype=torch.bfloat16)
    backend.load_transformer()
    torch.cuda.synchronize()
    load = time.perf_counter() - t0
    pos, neg = backend.encode_prompt(plan.spec.prompt, plan.spec.negative_prompt, **prompt_options(plan))
    emb = (torch.stack([neg, pos]) if batch == 2 else pos[None]).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, *shape, device="cuda", generator=g)
    t = torch.full((batch,), 700.0, device="cuda")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from forward_timing import time_forwards

    times, _ = time_forwards(functools.partial(backend.predict, x, t, emb), reps, warmup=1)  # 2 calls before
    peak = torch.cuda.max_memory_allocated() / 2**30
    del backend
    torch.cuda.empty_cache()
    return {
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "load_seconds": round(load, 3),
        "peak_gpu_memory_gib": peak,
    }


def _tile_stats(store_path, stage: str) -> dict[str, Any]:
    import numpy as np

    from storage import RenderStore

    store = RenderStore.open(str(store_path), mode="r")
    stats = store.tile_stats(stage)
    started, seconds = stats["started"].ravel(), stats["seconds"].ravel()
    fields = ("seconds", "read_seconds", "wait_seconds", "forward_seconds", "write_seconds")
    out = {f"task_{k}_median": float(np.median(stats[k])) for k in fields if k in stats}
    out["tasks"] = int(seconds.size)
    out["stage_wall_seconds"] = round(float((started + seconds).max() - started.min()), 3)
    return out


def _render(sd, client, plan, out_dir: Path, log: Log) -> dict[str, Any]:
    """One render on the cluster: its wall, per-tile timings, the worker's peak GPU memory (reset
    before it)."""
    import torch

    def on_task(r):
        log(f"  {r.get('task')} {r.get('name')} {r.get('seconds', 0):.2f}s")

    client.run(torch.cuda.reset_peak_memory_stats)
    t0 = time.perf_counter()
    result = sd.run_render(plan, out_dir, client, progress=False, on_task=on_task)
    wall = time.perf_counter() - t0
    peak = client.run(lambda: torch.cuda.max_memory_allocated() / 2**30)
    out = {
        "wall_seconds": round(wall, 3),
        "peak_gpu_memory_gib_per_worker": peak,
        "refine": _tile_stats(result.store_path, "refine"),
        "other_tasks_seconds": {
            r.get("name"): round(r["seconds"], 3)
            for r in result.receipts
            if r.get("task") not in ("denoise", "predict") and "seconds" in r
        },
    }
    if plan.sketch is not None:
        out["sketch"] = _tile_stats(result.store_path, "sketch")
    return out


def run_model(name: str, args: argparse.Namespace, workdir: Path, log: Log) -> dict[str, Any]:
    """The three measurements of one model (module docstring), as one JSON-ready dict."""
    import torch
    from distributed import Client

    import supergen_dask as sd

    m = model_specs(name, args)
    plan, native_plan = m["plan"], m["native_plan"]
    log(f"{name}: {m['num_frames']} frames ({m['frames_why']})")
    for line in plan.summary().splitlines():
        log(f"  {line}")
    est = plan.estimate().gpu
    t0 = time.perf_counter()
    cluster = sd.make_cluster(n_workers=1)  # dask-cuda: one worker, on the first GPU
    cluster_kind = type(cluster).__name__
    with cluster, Client(cluster) as client:
        start = time.perf_counter() - t0
        log(f"{name}: 2K render ({cluster_kind}, started in {start:.1f}s)")
        big = _render(sd, client, plan, workdir / f"{name}-2k", log)
        native = None
        if not args.skip_native:
            log(f"{name}: native render")
            native = _render(sd, client, native_plan, workdir / f"{name}-native", log)
        card = client.run(lambda: torch.cuda.get_device_name(0))
    log(f"{name}: bare forward, batch {m['guidance_batch']}, tile {m['tile_shape']}")
    bare = bare_forward(plan, m["tile_shape"], m["guidance_batch"], args.bare_reps)
    bare_med = bare["seconds_median"]
    g = plan.refine.grid
    ref = big["refine"]
    result = {
        "model": name,
        "family": m["family"],
        "num_frames": m["num_frames"],
        "frames_why": m["frames_why"],
        "size": f"{args.width}x{args.height}",
        "grid": f"{g.rows}x{g.cols} tiles of {g.tile_h}x{g.tile_w} latent, {plan.latent_frames} latent frames",
        "tile_tokens": est.tile_tokens if est else None,
        "guidance_batch": m["guidance_batch"],
        "summary": plan.summary(),
        "cluster": cluster_kind,
        "cluster_start_seconds": round(start, 3),
        "worker_cards": sorted(set(card.values())),
        "render_2k": big,
        "render_native": native,
        "native_size": f"{native_plan.model.native_width}x{native_plan.model.native_height}",
        "bare": bare,
        "task_seconds_median": ref.get("task_seconds_median"),
        "ratio_task_to_bare": ref["task_seconds_median"] / bare_med,
        "ratio_forward_in_task_to_bare": (
            ref["task_forward_seconds_median"] / bare_med if "task_forward_seconds_median" in ref else None
        ),
        "ratio_stage2_per_tile_to_bare": ref["stage_wall_seconds"] / ref["tasks"] / bare_med,
        "peak_gpu_memory_gib_2k": max(big["peak_gpu_memory_gib_per_worker"].values()),
        "peak_gpu_memory_gib_native": (
            None if native is None else max(native["peak_gpu_memory_gib_per_worker"].values())
        ),
        # the pre-flight estimate (supergen_dask.gpu_cost), to set against the measurement
        "estimate": None
        if est is None
        else {
            "denoising_seconds": est.seconds,
            "peak_gpu_memory_gib": est.peak_bytes / 2**30,
            "note": est.note,
        },
    }
    log(
        f"{name}: task {result['task_seconds_median']:.3f}s vs bare {bare_med:.3f}s "
        f"({result['ratio_task_to_bare']:.3f}x); peak {result['peak_gpu_memory_gib_2k']:.1f} GiB at 2K, "
        f"{result['peak_gpu_memory_gib_native'] or float('nan'):.1f} GiB native"
    )
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark only runs on a GPU", file=sys.stderr)
        return 2
    log = Log(args.log)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="supergen-families-"))
    results, errors = {}, {}
    t0 = time.perf_counter()
    for name in args.models:
        t1 = time.perf_counter()
        try:
            results[name] = run_model(name, args, workdir, log)
        except Exception as exc:  # noqa: BLE001 - one model's failure (memory, a kernel) is reported
            log(f"{name}: failed: {exc!r}")
            errors[name] = repr(exc)
        else:
            results[name]["model_run_seconds"] = round(time.perf_counter() - t1, 3)
        torch.cuda.empty_cache()
    from importlib.metadata import version

    report = {
        "benchmark": "families",
        "machine": {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "diffusers": version("diffusers"),
            "dask": version("dask"),
        },
        "schedule": {
            "num_inference_steps": args.num_inference_steps,
            "refine_steps": args.refine_steps,
            "dtype": "bfloat16",
            "gpus": 1,
        },
        "total_seconds": round(time.perf_counter() - t0, 3),
        "results": results,
        "errors": errors,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    log(f"wrote {out}")
    log.close()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
