"""Sweep the residual cache's threshold on the toy model: skip rate and fidelity against the
uncached render of the same spec.

    python scripts/cache_sweep.py --prompts 20 --scales 4 16 --taus 0.1 0.2 0.3 0.5 --out reports/cache-sweep

Prompts are taken ``--group`` at a time; for each group every configuration (the uncached render,
then each threshold and region direction) renders as one concurrent batch through the normal Dask
path (``supergen_dask.evaluate``), so its wall-clock is measured on its own. Per render it records
the stage-2 skip rate and model calls, PSNR and SSIM of the decoded frames against the uncached
render's (scikit-image), the quality record's last-grid seam score and exactly-one object check.

Rows are appended to ``<out>.rows.jsonl`` as each configuration of a group finishes; a re-run skips
what is there (a run stopped by a time limit keeps what it measured). ``--merge A.jsonl B.jsonl``
renders nothing and writes the report of rows from several runs (e.g. 4x on one machine, 16x on
another). Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np


def _frames(store_path: str) -> np.ndarray:
    from storage import RenderStore

    store = RenderStore.open(store_path, mode="r")
    return np.asarray(store.decoded_frames())


def _fidelity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if np.array_equal(a, b):
        return math.inf, 1.0
    psnr = float(peak_signal_noise_ratio(a, b, data_range=255))
    ssim = float(
        np.mean(
            [structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b, strict=True)]
        )
    )
    return psnr, ssim


def _configs(taus, directions):
    from supergen_dask.evaluate import EvalConfig
    from supergen_dask.spec import CacheSettings

    out = [EvalConfig("cache-off", {"cache": CacheSettings(enabled=False)})]
    for d in directions:
        for tau in taus:
            name = f"cache@{tau:g}" + ("" if d == "variable" else f"-{d}")
            out.append(
                EvalConfig(name, {"cache": CacheSettings(enabled=True, threshold=tau, region_direction=d)})
            )
    return out


def _row(r: dict, tau, direction, seconds: float, batch: int, ref_frames) -> dict:
    """A render's row; ``ref_frames`` are its uncached render's (``None``: it is that render)."""
    cache = r.get("cache") or {}
    psnr, ssim = (math.inf, 1.0) if ref_frames is None else _fidelity(ref_frames, _frames(r["store_path"]))
    return dict(
        prompt=r["prompt"],
        scale=r["scale"],
        config=r["config"],
        tau=tau,
        direction=direction,
        skip_rate=cache.get("skip_rate") or 0.0,
        model_calls=cache.get("model_calls", r["refine_tile_steps"]),  # uncached: every tile step
        tile_steps=cache.get("tile_steps", r["refine_tile_steps"]),
        psnr=psnr,
        ssim=ssim,
        seam=r.get("seam_score_last"),
        exactly_one=r.get("exactly_one"),
        seconds_per_render=seconds / batch,
        batch=batch,
    )


def summarise(rows: list[dict]) -> list[dict]:
    keys = sorted({(r["scale"], r["config"]) for r in rows}, key=lambda k: (k[0], _order(k[1])))
    out = []
    for scale, config in keys:
        sel = [r for r in rows if r["scale"] == scale and r["config"] == config]
        finite = [r["psnr"] for r in sel if math.isfinite(r["psnr"])]
        seams = [r["seam"] for r in sel if r["seam"] is not None]
        out.append(
            dict(
                scale=scale,
                config=config,
                tau=sel[0]["tau"],
                direction=sel[0]["direction"],
                renders=len(sel),
                skip_rate=float(np.mean([r["skip_rate"] for r in sel])),
                psnr_mean=float(np.mean(finite)) if finite else math.inf,
                psnr_min=float(np.min(finite)) if finite else math.inf,
                identical=sum(not math.isfinite(r["psnr"]) for r in sel),
                ssim_mean=float(np.mean([r["ssim"] for r in sel])),
                seam_mean=float(np.mean(seams)) if seams else None,
                exactly_one=float(np.mean([bool(r["exactly_one"]) for r in sel])),
                seconds_per_render=float(np.mean([r["seconds_per_render"] for r in sel])),
            )
        )
    return out


def _order(config: str) -> tuple:
    if config == "cache-off":
        return (0, "", 0.0)
    name, _, direction = config.partition("-")
    return (1, direction, float(name.split("@")[1]))


def markdown(summary: list[dict]) -> str:
    lines = [
        "| scale | cache | renders | stage-2 skip rate | PSNR mean / min (dB) vs off | SSIM | seam (last grid) "
        "| exactly one | s per render (batch) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        psnr = (
            "identical"
            if not math.isfinite(s["psnr_mean"])
            else f"{s['psnr_mean']:.1f} / {s['psnr_min']:.1f}"
        )
        if s["identical"] and math.isfinite(s["psnr_mean"]):
            psnr += f" ({s['identical']} identical)"
        seam = "-" if s["seam_mean"] is None else f"{s['seam_mean']:.3f}"
        lines.append(
            f"| {s['scale']:g}x | {s['config']} | {s['renders']} | {s['skip_rate']:.0%} | {psnr} | "
            f"{s['ssim_mean']:.3f} | {seam} | {s['exactly_one']:.0%} | {s['seconds_per_render']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out: Path, settings: dict) -> None:
    summary = summarise(rows)
    report = {"settings": settings, "summary": summary, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown(summary))
    print(markdown(summary))


def _read_rows(paths) -> list[dict]:
    rows = []
    for p in paths:
        p = Path(p)
        if p.exists():
            rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument(
        "--first-prompt", type=int, default=0, help="start at this prompt (split a sweep over calls)"
    )
    p.add_argument("--scales", type=float, nargs="+", default=[4.0, 16.0])
    p.add_argument("--taus", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    p.add_argument("--directions", nargs="+", default=["variable"], choices=["variable", "static"])
    p.add_argument("--group", type=int, default=10, help="prompts rendered together (default 10)")
    p.add_argument("--model", default="toy-wan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int)
    p.add_argument("--workers-per-gpu", type=int)
    p.add_argument("--root", default="renders/cache_sweep")
    p.add_argument("--out", default="reports/cache-sweep")
    p.add_argument("--merge", nargs="+", metavar="ROWS_JSONL", help="render nothing: report these rows")
    args = p.parse_args(argv)
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k != "merge"}
    if args.merge:
        rows = _read_rows(args.merge)
        write(rows, out, {**settings, "merged": args.merge})
        return 0

    from pipelines import model_info
    from pipelines.toy import evaluation_prompts
    from supergen_dask.cluster import client_for
    from supergen_dask.evaluate import evaluate, machine_info

    rows_path = out.parent / f"{out.name}.rows.jsonl"
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["prompt"], r["scale"], r["config"]) for r in _read_rows([rows_path])}
    prompts = evaluation_prompts(args.prompts, seed=args.seed)[args.first_prompt :]
    configs = _configs(args.taus, args.directions)
    steps = model_info(args.model).default_steps
    settings.update(machine=machine_info(), num_inference_steps=steps)
    t_start = time.perf_counter()
    with client_for(None, n_workers=args.workers, workers_per_gpu=args.workers_per_gpu) as client:
        for g in range(0, len(prompts), args.group):
            group = prompts[g : g + args.group]
            refs: dict[tuple[str, float], np.ndarray] = {}
            for cfg in configs:
                off = not cfg.overrides["cache"].enabled
                # the uncached renders are every threshold's reference: finished ones resume at once
                todo = [
                    (pr, sc) for pr in group for sc in args.scales if off or (pr, sc, cfg.name) not in done
                ]
                if not todo:
                    continue
                t0 = time.perf_counter()
                res = evaluate(
                    sorted({pr for pr, _ in todo}, key=group.index),
                    sorted({sc for _, sc in todo}),
                    [cfg],
                    client,
                    args.root,
                    model=args.model,
                    num_inference_steps=steps,
                    seed=args.seed,
                    progress=False,
                    chunk=None,
                )
                seconds = time.perf_counter() - t0
                cache = cfg.overrides.get("cache")
                with rows_path.open("a") as f:
                    for r in res:
                        key = (r["prompt"], r["scale"])
                        if off:
                            refs[key] = _frames(r["store_path"])
                        if (r["prompt"], r["scale"], cfg.name) in done:
                            continue
                        row = _row(
                            r,
                            None if off else cache.threshold,
                            None if off else cache.region_direction,
                            seconds,
                            len(res),
                            None if off else refs[key],
                        )
                        f.write(json.dumps(row) + "\n")
                print(
                    f"[{time.perf_counter() - t_start:7.1f} s] prompts {g}-{g + len(group) - 1} {cfg.name}: "
                    f"{len(res)} renders in {seconds:.1f} s",
                    flush=True,
                )
    write(_read_rows([rows_path]), out, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
