"""The quality record of a render: metrics measured on its decoded frames, stored with it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.toy import COLOURS, PROMPT_GRAMMAR, parse_prompt
from supergen_dask.metrics import (
    detail_gain,
    duplication,
    grid_lines,
    laplacian_energy,
    object_mask,
    seam_scores,
    temporal_flicker,
)
from supergen_dask.plan import RenderPlan

__all__ = [
    "prompted_colour",
    "counted_colour",
    "step_grid_lines",
    "seam_pass_grid_lines",
    "upscaled_sketch",
    "quality_window",
    "detail_reference",
    "render_quality",
]


def prompted_colour(prompt: str) -> tuple[int, int, int] | None:
    """RGB of the object colour a toy-grammar prompt names, if it names one."""
    name = parse_prompt(prompt).get("colour")
    return None if name is None else COLOURS[name]


def counted_colour(plan: RenderPlan) -> tuple[int, int, int] | None:
    """The object colour the quality record looks for: only a model that declares the toy prompt
    grammar (``ModelInfo.prompt_grammar``) is asked for one object of the prompted colour; a real
    model's prompt may name a colour by chance ("a red car") without meaning a flat toy shape."""
    if plan.model.prompt_grammar != PROMPT_GRAMMAR:
        return None
    return prompted_colour(plan.spec.prompt)


def step_grid_lines(plan: RenderPlan, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows and columns of the tile borders of refine step ``step`` inside the output."""
    st, f = plan.refine, plan.model.spatial_factor
    g = st.grid
    oy, ox = st.offset(step)
    rows = grid_lines(oy, g.tile_h, g.canvas_h, f)
    cols = grid_lines(ox, g.tile_w, g.canvas_w, f)
    return rows[rows < g.valid_h * f], cols[cols < g.valid_w * f]


def seam_pass_grid_lines(plan: RenderPlan) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows and columns of the seam pass's window borders inside the output (none without
    a seam pass)."""
    if plan.seam is None:
        return np.zeros(0), np.zeros(0)
    g, f = plan.seam.grid, plan.model.spatial_factor
    oy, ox = plan.seam.offset
    rows = grid_lines(oy, g.tile_h, g.canvas_h, f) if g.rows > 1 else np.zeros(0)
    cols = grid_lines(ox, g.tile_w, g.canvas_w, f) if g.cols > 1 else np.zeros(0)
    return rows[rows < g.valid_h * f], cols[cols < g.valid_w * f]


def upscaled_sketch(plan: RenderPlan, sketch: np.ndarray) -> np.ndarray:
    """The decoded sketch bicubically upscaled to the output size, as the refinement starts from."""
    x = torch.from_numpy(sketch).permute(0, 3, 1, 2).float()
    up = F.interpolate(x, size=(plan.spec.height, plan.spec.width), mode="bicubic", align_corners=False)
    return up.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def quality_window(plan: RenderPlan) -> slice:
    """The frames the quality record measures: ``plan.quality_frames`` contiguous frames from the
    middle (flicker needs neighbours), so the record stays cheap next to the render."""
    total, limit = plan.pixel_frames, plan.quality_frames
    start = max(0, (total - limit) // 2)
    return slice(start, start + min(total, limit))


def detail_reference(plan: RenderPlan, store, window: slice | None = None) -> float:
    """``laplacian_energy`` of the bicubic-upscaled sketch over ``window`` (default
    ``quality_window``): what the record's ``detail_gain`` divides by. It needs only the decoded
    sketch, so a render measures it while the refinement runs (``tasks.measure_detail_reference``):
    at 4K the upscale and its Laplacian were about half of the record's time, which comes after
    the last decode."""
    window = quality_window(plan) if window is None else window
    return laplacian_energy(upscaled_sketch(plan, store.read_sketch_pixels()[window]))


def render_quality(
    plan: RenderPlan, store, frames: np.ndarray | None = None, reference_energy: float | None = None
) -> dict[str, Any]:
    """Metrics of a finished render (see ``supergen_dask.metrics``).

    ``seam_score_last``/``_mean``/``_max``: seam score on the final video at the borders of the
    last step's grid, and averaged/maximised over every refinement step's grid (with shifting the
    grids move, so no border stays put). ``detail_gain``: high-frequency energy relative to the
    bicubic-upscaled sketch. For a model of the toy prompt grammar (``counted_colour``), the
    prompted object is excluded from the seam and flicker statistics and counted
    (``object_counts``, ``median_count``, ``exactly_one``); other models' records have no counts.

    The image gradients are computed once for all steps' grids (``seam_scores``), so the record's
    cost does not grow with the number of refinement steps. ``frames``: the frames to measure
    (default: the decoded ``quality_window``, against the same window of the sketch);
    ``reference_energy``: ``detail_reference(plan, store)`` when it was measured before.
    """
    window = slice(None)
    if frames is None:
        window = quality_window(plan)
        frames = store.decoded_frames(window)
    colour = counted_colour(plan)
    mask = object_mask(frames, colour) if colour is not None else None
    grids = [step_grid_lines(plan, step) for step in plan.refine.steps]
    grids = [(rows, cols) for rows, cols in grids if len(rows) or len(cols)]
    extra = seam_pass_grid_lines(plan)
    has_pass = bool(len(extra[0]) or len(extra[1]))
    scores = seam_scores(frames, grids + ([extra] if has_pass else []), exclude_mask=mask)
    pass_score = scores.pop() if has_pass else None
    scores = [s for s in scores if np.isfinite(s)]
    out: dict[str, Any] = {
        "frames": int(frames.shape[0]),
        "seam_score_last": scores[-1] if scores else None,
        "seam_score_mean": float(np.mean(scores)) if scores else None,
        "seam_score_max": float(np.max(scores)) if scores else None,
        # the seam pass's own window borders (it must not leave new seams where it cuts)
        "seam_score_pass": float(pass_score) if pass_score is not None and np.isfinite(pass_score) else None,
        "temporal_flicker": temporal_flicker(frames, exclude_mask=mask),
    }
    if plan.sketch is not None:
        if reference_energy is None:
            reference_energy = detail_reference(plan, store, window)
        out["detail_gain"] = detail_gain(frames, reference_energy=reference_energy)
    if colour is not None:
        d = duplication(frames, colour)
        out.update(
            object_counts=[int(c) for c in d["counts"]],
            median_count=float(d["median"]),
            exactly_one=bool(d["exactly_one"]),
        )
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in out.items()}
