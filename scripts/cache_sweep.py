"""Sweep the residual cache's threshold on the toy model: skip rate and fidelity against the
uncached render of the same spec.

    python scripts/cache_sweep.py --prompts 20 --scales 4 16 --taus 0.05 0.1 0.2 0.4 --out reports/cache_sweep

For every (prompt, scale) it renders the spec without the cache, then with each threshold, all
through the normal Dask path, and records per render: stage-2 skip rate, PSNR and SSIM of the
decoded frames against the uncached render's (scikit-image), the quality record's last-grid seam
score and exactly-one object count, and wall-clock seconds. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np


def _frames(result) -> np.ndarray:
    from storage import RenderStore

    store = RenderStore.open(str(result.store_path), mode="r")
    return np.asarray(store.decoded_frames(slice(0, result.plan.pixel_frames)))


def _fidelity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = float(peak_signal_noise_ratio(a, b, data_range=255)) if not np.array_equal(a, b) else math.inf
    ssim = float(
        np.mean(
            [structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b, strict=True)]
        )
    )
    return psnr, ssim


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--scales", type=float, nargs="+", default=[4.0, 16.0])
    p.add_argument("--taus", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    p.add_argument("--direction", default="variable", choices=["variable", "static"])
    p.add_argument("--model", default="toy-wan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--root", default="renders/cache_sweep")
    p.add_argument("--out", default="reports/cache_sweep")
    args = p.parse_args(argv)

    from distributed import Client

    import supergen_dask as sd
    from pipelines import model_info
    from pipelines.toy import evaluation_prompts
    from storage import RenderStore
    from supergen_dask.cluster import make_cluster
    from supergen_dask.spec import CacheSettings

    info = model_info(args.model)
    prompts = evaluation_prompts(args.prompts, seed=args.seed)
    rows = []
    with make_cluster(n_workers=args.workers) as cluster, Client(cluster) as client:
        for scale in args.scales:
            side, f = math.sqrt(scale), info.spatial_factor
            h = int(round(info.native_height * side / f)) * f
            w = int(round(info.native_width * side / f)) * f
            for prompt in prompts:
                base = sd.RenderSpec(prompt=prompt, model=args.model, height=h, width=w, seed=args.seed)
                t0 = time.perf_counter()
                ref = sd.render(
                    base,
                    client=client,
                    progress=False,
                    output_dir=Path(args.root) / f"{scale:g}x-{sd.plan_render(base).token[:10]}",
                )
                ref_seconds = time.perf_counter() - t0
                ref_frames = _frames(ref)
                q = ref.quality or {}
                rows.append(
                    dict(
                        prompt=prompt,
                        scale=scale,
                        tau=None,
                        skip_rate=0.0,
                        psnr=math.inf,
                        ssim=1.0,
                        seam=q.get("seam_score_last"),
                        exactly_one=q.get("exactly_one"),
                        seconds=ref_seconds,
                    )
                )
                for tau in args.taus:
                    spec = base.replace(
                        cache=CacheSettings(enabled=True, threshold=tau, region_direction=args.direction)
                    )
                    t0 = time.perf_counter()
                    out = Path(args.root) / f"{scale:g}x-{sd.plan_render(spec).token[:10]}"
                    res = sd.render(spec, client=client, progress=False, output_dir=out)
                    seconds = time.perf_counter() - t0
                    computed = RenderStore.open(str(res.store_path), mode="r").tile_stats("refine")[
                        "computed"
                    ]
                    psnr, ssim = _fidelity(ref_frames, _frames(res))
                    q = res.quality or {}
                    rows.append(
                        dict(
                            prompt=prompt,
                            scale=scale,
                            tau=tau,
                            skip_rate=float((computed == 0).mean()),
                            psnr=psnr,
                            ssim=ssim,
                            seam=q.get("seam_score_last"),
                            exactly_one=q.get("exactly_one"),
                            seconds=seconds,
                        )
                    )
                    print(
                        f"{scale:g}x tau {tau:g} {prompt!r}: skip {rows[-1]['skip_rate']:.0%}, "
                        f"PSNR {psnr:.1f} dB, SSIM {ssim:.3f}",
                        flush=True,
                    )
    summary = []
    for scale in args.scales:
        for tau in [None, *args.taus]:
            sel = [r for r in rows if r["scale"] == scale and r["tau"] == tau]
            finite = [r["psnr"] for r in sel if math.isfinite(r["psnr"])]
            summary.append(
                dict(
                    scale=scale,
                    tau=tau,
                    renders=len(sel),
                    skip_rate=float(np.mean([r["skip_rate"] for r in sel])),
                    psnr_mean=float(np.mean(finite)) if finite else math.inf,
                    psnr_min=float(np.min(finite)) if finite else math.inf,
                    ssim_mean=float(np.mean([r["ssim"] for r in sel])),
                    seam_mean=float(np.mean([r["seam"] for r in sel if r["seam"] is not None])),
                    exactly_one=float(np.mean([bool(r["exactly_one"]) for r in sel])),
                    seconds_mean=float(np.mean([r["seconds"] for r in sel])),
                )
            )
    report = {"settings": vars(args), "prompts": prompts, "summary": summary, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    lines = [
        "| scale | tau | renders | skip rate | PSNR mean / min (dB) | SSIM | seam (last grid) | exactly one | s per render |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['scale']:g}x | {'off' if s['tau'] is None else format(s['tau'], 'g')} | {s['renders']} | "
            f"{s['skip_rate']:.0%} | {s['psnr_mean']:.1f} / {s['psnr_min']:.1f} | {s['ssim_mean']:.3f} | "
            f"{s['seam_mean']:.3f} | {s['exactly_one']:.0%} | {s['seconds_mean']:.1f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
