"""Scaling over GPUs: one render on N GPUs with the wall time of every stage, GPU-busy fraction
per worker and peak memory, written as JSON with the machine it ran on.

    python benchmarks/scaling.py --gpus 1 --out results/scaling-1gpu.json
    python benchmarks/scaling.py --gpus 2 --out results/scaling-2gpu.json
    python benchmarks/scaling.py --merge results/scaling-1gpu.json results/scaling-2gpu.json \\
        --out results/scaling-h100.json

Default: 3840x2160, 81 frames, Wan2.1-1.3B-shaped random-weight transformer in bf16, a short
schedule (10 steps, k=4) so a one-GPU run fits one device call. Stage times come from the task
receipts (each says when it finished and how long it ran): a stage's time is from the start of its
first task to the end of its last. Written for any number of GPUs; refuses to run without CUDA.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import dask.config

STAGES = ("prompt", "stage1", "upscale", "stage2", "decode", "encode", "quality")


def stage_of(receipt: dict) -> str | None:
    """Which stage of the render a task receipt belongs to."""
    task, name = receipt.get("task"), str(receipt.get("name", ""))
    if task in ("predict", "denoise", "hit"):
        return "stage1" if name.startswith("sketch") else "stage2"
    if task in ("upscale", "start"):
        return "upscale"
    return {"prompt": "prompt", "decode": "decode", "encode": "encode", "quality": "quality"}.get(task)


def gpu_task(receipt: dict, split_sketch: bool) -> bool:
    """Tasks that hold a GPU slot (the sketch's guidance combine and the encode run on the CPU)."""
    task, name = receipt.get("task"), str(receipt.get("name", ""))
    if task == "denoise" and name.startswith("sketch"):
        return not split_sketch
    return task in ("prompt", "predict", "denoise", "upscale", "start", "decode", "warm")


def summarise(receipts: list[dict], wall: float, split_sketch: bool) -> dict:
    spans: dict[str, list[float]] = {}
    for r in receipts:
        if r.get("skipped") or "finished" not in r:
            continue
        s = stage_of(r)
        if s is None:
            continue
        start, end = r["finished"] - r["seconds"], r["finished"]
        lo, hi = spans.get(s, (start, end))
        spans[s] = [min(lo, start), max(hi, end)]
    busy: dict[str, list] = defaultdict(list)
    for r in receipts:
        if not r.get("skipped") and gpu_task(r, split_sketch):
            busy[r["worker"]].append(on_card(r))
    out = {f"{s}_seconds": round(spans[s][1] - spans[s][0], 3) if s in spans else None for s in STAGES}
    out["end_to_end_seconds"] = round(wall, 3)
    out["gpu_busy_fraction"] = {w: round(union_seconds(iv) / wall, 3) for w, iv in sorted(busy.items())}
    return out


def on_card(receipt: dict) -> tuple[float, float]:
    """A task's time on its card as a wall-clock interval: from its device turn to its results
    on the host where the receipt says (tile tasks), else the whole task."""
    if "turn_started" in receipt and "forward_seconds" in receipt:
        return receipt["turn_started"], receipt["turn_started"] + receipt["forward_seconds"]
    return receipt["finished"] - receipt["seconds"], receipt["finished"]


def stage2_idle(receipts: list[dict]) -> dict:
    """Where each worker's card waited during stage 2, in seconds: from the stage's first model
    call on any card to the worker's first (``before_first``), between its model calls
    (``between``) and from its last to the stage's last (``after_last``), with its model calls
    (``calls``). A step's tail shows in ``after_last`` and ``between``, a slow start in
    ``before_first``."""
    per: dict[str, list] = defaultdict(list)
    for r in receipts:
        if r.get("task") == "denoise" and stage_of(r) == "stage2" and not r.get("skipped"):
            per[r["worker"]].append(on_card(r))
    if not per:
        return {}
    lo = min(a for iv in per.values() for a, _ in iv)
    hi = max(b for iv in per.values() for _, b in iv)
    out = {}
    for w, iv in sorted(per.items()):
        first, last = min(a for a, _ in iv), max(b for _, b in iv)
        out[w] = {
            "calls": len(iv),
            "before_first": round(first - lo, 3),
            "between": round((last - first) - union_seconds(iv), 3),
            "after_last": round(hi - last, 3),
        }
    return out


def union_seconds(intervals) -> float:
    """Length of the union of ``(start, end)`` intervals: tasks that share a card (GPU slots)
    overlap, and a card computing for two of them at once is busy once."""
    total, reach = 0.0, -math.inf
    for lo, hi in sorted(intervals):
        if hi > reach:
            total += hi - max(lo, reach)
            reach = hi
    return total


def _cache_settings(value: str):
    from supergen_dask.cli import _cache_option
    from supergen_dask.spec import CacheSettings

    return CacheSettings(**_cache_option(value))


def _cache_by_step(store_path, plan) -> dict | None:
    """Per refinement step: model calls and the mean predicted change (what tau is compared to)."""
    import numpy as np

    from storage import RenderStore

    if plan.cache is None:
        return None
    stats = RenderStore.open(str(store_path), mode="r").tile_stats("refine")
    return {
        "model_calls": [int(v) for v in np.nansum(stats["computed"], axis=(1, 2))],
        "mean_change": [
            None if np.isnan(v) else round(float(v), 4)
            for v in np.nanmean(
                np.where(np.isfinite(stats["cache_change"]), stats["cache_change"], np.nan), axis=(1, 2)
            )
        ]
        if np.isfinite(stats["cache_change"]).any()
        else [],
        "mean_gain_k": [
            None if np.isnan(v) else round(float(v), 4) for v in np.nanmean(stats["cache_k"], axis=(1, 2))
        ],
    }


def _calls_per_worker(receipts: list[dict]) -> dict:
    """Stage-2 model calls and their seconds, per worker (the balance the cache leaves)."""
    out: dict[str, dict] = {}
    for r in receipts:
        if (
            r.get("task") == "denoise"
            and str(r.get("name", "")).startswith("refine")
            and not r.get("skipped")
        ):
            w = out.setdefault(r["worker"], {"calls": 0, "intervals": []})
            w["calls"] += 1
            w["intervals"].append(on_card(r))
    # seconds: the union of the calls' time on the card (with GPU slots, calls overlap)
    return {
        k: {"calls": w["calls"], "seconds": round(union_seconds(w["intervals"]), 3)} for k, w in out.items()
    }


def run(args) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark only runs on a GPU")
    from distributed import Client

    import supergen_dask as sd
    from storage import RenderStore

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
        cache=_cache_settings(args.cache),
    )
    plan = sd.plan_render(spec)
    print(plan.summary(), flush=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="supergen-scaling-"))
    log = open(args.log, "a") if args.log else None  # noqa: SIM115 - streamed while the render runs

    def on_task(r):
        line = f"{time.strftime('%H:%M:%S')} {r.get('task')} {r.get('name')} {r.get('seconds', 0):.2f}s"
        print(line, flush=True)
        if log:
            log.write(line + "\n")
            log.flush()

    t0 = time.perf_counter()
    if args.gpu_slots is None:
        args.gpu_slots = dask.config.get("supergen.cluster.gpu-slots")
    with dask.config.set({"supergen.cluster.gpu-slots": args.gpu_slots}):
        cluster = sd.make_cluster(n_workers=args.gpus)
    with cluster, Client(cluster) as client:
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = sd.run_render(plan, workdir / "render", client, progress=False, on_task=on_task)
        wall = time.perf_counter() - t1
        peak = client.run(lambda: torch.cuda.max_memory_allocated() / 2**30)
        cards = client.run(lambda: __import__("supergen_dask.worker_models").worker_models.gpu_identity())
        cluster_kind = type(cluster).__name__
    split = plan.sketch is not None and plan.sketch.split_guidance
    g = plan.refine.grid
    report = {
        "benchmark": "scaling",
        "machine": {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_count_visible": torch.cuda.device_count(),
            "cluster": cluster_kind,
            "worker_cards": cards,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "render": {
            "model": args.model,
            "size": f"{args.width}x{args.height}",
            "num_frames": args.num_frames,
            "num_inference_steps": args.num_inference_steps,
            "refine_steps": args.refine_steps,
            "grid": f"{g.rows}x{g.cols} tiles of {g.tile_h}x{g.tile_w} latent",
            "tile_tasks": plan.n_tile_tasks(),
            "summary": plan.summary(),
        },
        "gpus": args.gpus,
        "gpu_slots": args.gpu_slots,
        "cluster_start_seconds": round(startup, 3),
        "peak_gpu_memory_gib_per_worker": peak,
        **summarise(result.receipts, wall, split),
        "quality": result.quality,
        "cache": sd.graph.cache_summary(RenderStore.open(str(result.store_path), mode="r"), plan),
        "model_calls_per_worker": _calls_per_worker(result.receipts),
        "stage2_idle_seconds_per_worker": stage2_idle(result.receipts),
        "cache_by_step": _cache_by_step(result.store_path, plan),
    }
    if log:
        log.close()
    return report


def merge(paths: list[str]) -> dict:
    runs = sorted((json.loads(Path(p).read_text()) for p in paths), key=lambda r: r["gpus"])
    machines = {r["machine"]["gpu"] for r in runs}
    if len(machines) != 1:
        raise SystemExit(f"runs were made on different cards {sorted(machines)}: not comparable")
    keys = [f"{s}_seconds" for s in STAGES] + ["end_to_end_seconds"]
    scaling = {"gpus": [r["gpus"] for r in runs]}
    scaling.update({k: [r[k] for r in runs] for k in keys})
    base = runs[0]
    speedup = {
        k: [round(base[k] / r[k], 3) if base[k] and r[k] else None for r in runs]
        for k in ("stage1_seconds", "stage2_seconds", "end_to_end_seconds")
    }
    return {
        "benchmark": "scaling",
        "machine": base["machine"],
        "render": base["render"],
        "scaling": scaling,
        "speedup_over_first": speedup,
        "gpu_busy_fraction": {str(r["gpus"]): r["gpu_busy_fraction"] for r in runs},
        "runs": runs,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--cache", default="off", help="residual cache: off, on or a threshold")
    p.add_argument(
        "--gpu-slots",
        type=int,
        default=None,
        help="tile tasks each worker runs at once (supergen.cluster.gpu-slots; default: the setting's)",
    )
    p.add_argument("--model", default="random-wan2.1-1.3b-shape")
    p.add_argument("--height", type=int, default=2160)
    p.add_argument("--width", type=int, default=3840)
    p.add_argument("--num-frames", type=int, default=81)
    p.add_argument("--num-inference-steps", type=int, default=10)
    p.add_argument("--refine-steps", type=int, default=4)
    p.add_argument("--workdir", default=None)
    p.add_argument("--log", default=None, help="append a line per finished task here (progress)")
    p.add_argument("--merge", nargs="+", default=None, help="join per-GPU-count reports instead")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    report = merge(args.merge) if args.merge else run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "render")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
