"""Other blends of the seam pass, scored on finished renders of ``scripts/seam_pass_check.py``.

For each render under ``--root`` (made with the seam pass), the pass is rebuilt window by window
with the task code under each blend weight, decoded, and scored: at the last grid's borders (over
the clean procedural video's score there), at the pass's own borders and at the lines 3 and 4
latent cells past each last-grid border (over the render without a pass at the same lines: where
a blend that switches from one prediction to the other would leave a step). Also the clean
video's score at the last grid's lines next to its mean over every grid offset, to show how much
the reference itself depends on where the lines fall. Writes JSON.

    python scripts/seam_pass_check.py --prompts 8 --scale 4 --root seam-renders-4x
    python scripts/seam_blends_check.py --root seam-renders-4x --out reports/seam-blends-4x-cpu.json

Blends (``d``: distance in cells to a grid's nearest border, less the one cell touching it):
``distance`` (the pass's: ``d_seam / (d_last + d_seam)``), ``switch<B>`` (the pass within ``B``
cells of a last-grid border, the last step beyond, half each where they meet the pass's own
borders) and ``ramp<B>`` (``b_last / (1 + b_last * b_seam)``, ``b = max(0, 1 - d / B)``: the
pass's share falls linearly to 0 over ``B`` cells).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import dask.config
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import seam_pass_check as check  # noqa: E402

from pipelines.toy import Scene, render_scene  # noqa: E402
from storage import RenderStore  # noqa: E402
from supergen_dask import seam as seam_module  # noqa: E402
from supergen_dask import worker_models  # noqa: E402
from supergen_dask.metrics import grid_lines, object_mask, seam_profiles  # noqa: E402
from supergen_dask.plan import plan_render  # noqa: E402
from supergen_dask.quality import counted_colour, step_grid_lines  # noqa: E402
from supergen_dask.spec import RenderSpec  # noqa: E402

DISTANCE = seam_module.seam_weight


def _distances(y0, x0, h, w, g, offset):
    """As the pass's weight measures them: less the one cell touching a border."""
    return np.maximum(seam_module.window_border_distance(y0, x0, h, w, g, offset) - 1, 0)


def switch(band: int):
    def weight(y0, x0, h, w, g, last, seam):
        b_last = np.clip(1 - _distances(y0, x0, h, w, g, last) / band, 0, 1)
        b_seam = np.clip(1 - _distances(y0, x0, h, w, g, seam) / band, 0, 1)
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(b_last / (b_last + b_seam), nan=0.0).astype(np.float32)

    return weight


def ramp(band: int):
    def weight(y0, x0, h, w, g, last, seam):
        b_last = np.clip(1 - _distances(y0, x0, h, w, g, last) / band, 0, 1)
        b_seam = np.clip(1 - _distances(y0, x0, h, w, g, seam) / band, 0, 1)
        return (b_last / (1 + b_last * b_seam)).astype(np.float32)

    return weight


BLENDS = {"distance": DISTANCE, "switch2": switch(2), **{f"ramp{b}": ramp(b) for b in (2, 3, 4, 6)}}


def _scores(video, mask, plan) -> dict:
    out = check.border_scores(video, mask, plan, {"on": plan})
    f = plan.model.spatial_factor
    rows, cols = step_grid_lines(plan, plan.refine.last)
    profiles = seam_profiles(video, mask)
    h, w = video.shape[1:3]
    for k in (3, 4):  # lines k cells past each last-grid border, on both sides
        rr, cc = np.concatenate([rows + k * f, rows - k * f]), np.concatenate([cols + k * f, cols - k * f])
        out[f"plus{k}"] = check._score(profiles, rr[(rr > 0) & (rr < h)], cc[(cc > 0) & (cc < w)])
    return out


def _clean_reference(clean, mask, plan) -> dict:
    """The clean video's score at the last grid's lines, and over every offset of that grid."""
    g, f = plan.refine.grid, plan.model.spatial_factor
    profiles = seam_profiles(clean, mask)
    h, w = clean.shape[1:3]
    per_offset = []
    for o in range(g.tile_h):
        rr = grid_lines(o, g.tile_h, g.canvas_h, f)
        cc = grid_lines(o * g.tile_w // g.tile_h, g.tile_w, g.canvas_w, f)
        per_offset.append(check._score(profiles, rr[(rr > 0) & (rr < h)], cc[(cc > 0) & (cc < w)]))
    per_offset = [s for s in per_offset if s is not None]
    return {
        "at_last_grid": check._score(profiles, *step_grid_lines(plan, plan.refine.last)),
        "all_offsets_mean": statistics.fmean(per_offset),
        "all_offsets_min": min(per_offset),
        "all_offsets_max": max(per_offset),
    }


def measure(render_dir: Path) -> dict:
    store = RenderStore.open(str(render_dir / "render.zarr"), mode="r")
    spec = RenderSpec.from_dict(store.attrs["spec"])
    with dask.config.set({"supergen.seam.enabled": True}):
        plan = plan_render(spec)
    backend = worker_models.get_backend(spec.model, spec.dtype)
    embeds = worker_models.prompt_embeds(store, backend.device)
    scene = Scene.from_prompt(spec.prompt, seed=spec.seed)
    clean = render_scene(scene, spec.height, spec.width, plan.pixel_frames)
    colour = counted_colour(plan)
    row = {"prompt": spec.prompt, "size": f"{spec.width}x{spec.height}"}
    row["clean"] = {**_scores(clean, object_mask(clean, scene.colour_rgb), plan)}
    row["clean_reference"] = _clean_reference(clean, object_mask(clean, scene.colour_rgb), plan)
    off = check.decode(
        backend, plan, store.read_canvas("refine", "latents", plan.refine.last).astype(np.float32)
    )
    row["off"] = _scores(off, object_mask(off, colour), plan)
    try:
        for name, weight in BLENDS.items():
            seam_module.seam_weight = weight
            video = check.decode(backend, plan, check.rebuild_pass(store, plan, backend, embeds))
            if name == "distance" and not np.array_equal(video, store.decoded_frames()):
                raise AssertionError(f"{render_dir}: the rebuilt pass differs from the render's")
            row[name] = _scores(video, object_mask(video, colour), plan)
    finally:
        seam_module.seam_weight = DISTANCE
    return row


def summary(rows: list[dict]) -> dict:
    out = {}
    for name in ["off", *BLENDS]:
        s = {}
        last = [r[name]["last"] / r["clean"]["last"] for r in rows]
        s["last_vs_clean_mean"], s["last_vs_clean_median"] = statistics.fmean(last), statistics.median(last)
        s["last_vs_clean_all_offsets_mean"] = statistics.fmean(
            r[name]["last"] / r["clean_reference"]["all_offsets_mean"] for r in rows
        )
        for part in ("pass_on", "plus3", "plus4"):
            s[f"{part}_vs_off_mean"] = statistics.fmean(r[name][part] / r["off"][part] for r in rows)
        out[name] = s
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="the --root of a seam_pass_check.py run")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    dirs = sorted(d for d in Path(a.root).iterdir() if d.name.isdigit())
    if not dirs:
        raise SystemExit(f"no renders under {a.root} (run scripts/seam_pass_check.py --root {a.root})")
    rows = []
    for d in dirs:
        rows.append(measure(d))
        print(json.dumps({"prompt": rows[-1]["prompt"]}), flush=True)
    result = {"renders": rows, "summary": summary(rows)}
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
