"""Seam score at the last refinement grid with the seam pass off and on, on toy-grammar prompts.

For each prompt it renders the same spec twice (``seam.enabled`` false/true) and records the seam
score at the last grid's borders, split into borders inside the frame and borders within one
latent cell of the frame edge (where the canvas wraps), next to the clean procedural video at the
same borders and to the render's own score at latent-cell boundaries away from any tile border
(the decoder's floor: the toy's autoencoder decodes each latent cell on its own). Writes JSON.

    python scripts/seam_pass_check.py --prompts 3 --scale 4 --out reports/seam-pass-4x-cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import dask.config
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines import model_info  # noqa: E402
from pipelines.toy import Scene, evaluation_prompts, render_scene  # noqa: E402
from storage import RenderStore  # noqa: E402
from supergen_dask.cluster import client_for  # noqa: E402
from supergen_dask.graph import run_render  # noqa: E402
from supergen_dask.metrics import object_mask, seam_profiles  # noqa: E402
from supergen_dask.plan import plan_render  # noqa: E402
from supergen_dask.quality import counted_colour, step_grid_lines  # noqa: E402
from supergen_dask.spec import RenderSpec  # noqa: E402


def border_scores(video: np.ndarray, mask, plan) -> dict[str, float | None]:
    """Seam scores of ``video`` at the last grid: all borders, inner ones, those at the frame edge,
    and at latent-cell boundaries at least two cells from any border of the last or seam grid."""
    f = plan.model.spatial_factor
    rows, cols = step_grid_lines(plan, plan.refine.last)
    H, W = video.shape[1:3]
    p = seam_profiles(video, mask)

    def score(r, c):
        s = p.score(np.asarray(r, int), np.asarray(c, int)) if len(r) or len(c) else float("nan")
        return float(s) if np.isfinite(s) else None

    edge_r = [x for x in rows if x <= f or x >= H - f]
    edge_c = [x for x in cols if x <= f or x >= W - f]
    avoid = list(rows) + list(cols)
    if plan.seam is not None:
        g = plan.seam.grid
        avoid += [
            (o + k * t) * f
            for o, t in zip(plan.seam.offset, (g.tile_h, g.tile_w), strict=True)
            for k in range(64)
        ]
    floor_r = [y for y in range(f, H, f) if all(abs(y - a) > 2 * f for a in avoid)]
    floor_c = [x for x in range(f, W, f) if all(abs(x - a) > 2 * f for a in avoid)]
    return {
        "last": score(rows, cols),
        "inner": score([x for x in rows if x not in edge_r], [x for x in cols if x not in edge_c]),
        "edge": score(edge_r, edge_c),
        "cell_floor": score(floor_r, floor_c),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-wan")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--scale", type=float, default=4.0, help="output area / native area")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--refine-steps", type=int, default=18)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--root", default="seam-check-renders")
    ap.add_argument("--out", default="seam-pass-check.json")
    a = ap.parse_args(argv)
    info = model_info(a.model)
    f, side = info.spatial_factor, math.sqrt(a.scale)
    h, w = int(round(info.native_height * side / f)) * f, int(round(info.native_width * side / f)) * f
    rows = []
    with client_for(None, n_workers=a.workers, processes=a.workers > 1) as client:
        for prompt in evaluation_prompts(a.prompts, seed=0):
            spec = RenderSpec(
                prompt=prompt,
                model=a.model,
                height=h,
                width=w,
                num_inference_steps=a.steps,
                refine_steps=a.refine_steps,
                seed=0,
            )
            scene = Scene.from_prompt(prompt, seed=0)
            for enabled in (False, True):
                with dask.config.set({"supergen.seam.enabled": enabled}):
                    plan = plan_render(spec)
                out = Path(a.root) / f"{len(rows):03d}"
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                result = run_render(plan, out, client, progress=False)
                video = RenderStore.open(str(result.store_path), mode="r").decoded_frames()
                colour = counted_colour(plan)
                mask = object_mask(video, colour) if colour is not None else None
                clean = render_scene(scene, h, w, plan.pixel_frames)
                rows.append(
                    {
                        "prompt": prompt,
                        "size": f"{w}x{h}",
                        "seam_pass": enabled,
                        "tile_calls_refine": len(plan.refine.steps) * plan.refine.grid.n_tiles
                        + (0 if plan.seam is None else plan.seam.grid.n_tiles),
                        "render": border_scores(video, mask, plan),
                        "clean": border_scores(clean, object_mask(clean, scene.colour_rgb), plan),
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
