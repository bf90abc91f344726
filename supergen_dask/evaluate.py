"""``supergen evaluate``: a quality table for a set of prompts and settings.

For every prompt of the toy grammar and every output scale (area multiple of native), it renders
each configuration through the normal Dask path and reads back the render's quality record
(``supergen_dask.quality``). Next to the tiled renders it puts the two references a number needs
to mean something: the same metric on the clean procedural video of the prompt (rendered at the
output size, at the same tile borders) and the model's accuracy at its native size.

Configurations (``standard_configs``):

- ``native``: the model at its own size (no upscaling): the accuracy ceiling;
- ``direct``: the whole high-resolution canvas in one piece, from noise;
- ``tiles-no-sketch``: tiles from noise, no sketch;
- ``fixed-tiles@t``: sketch re-noised to ``t``, tiles without shifting;
- ``supergen@t``: sketch re-noised to ``t``, shifting tiles;
- ``supergen-anchor@t``: the same with sketch anchoring.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import model_info
from pipelines.toy import Scene, render_scene
from supergen_dask.graph import RenderResult, cache_summary, render_batch
from supergen_dask.metrics import object_mask, seam_score, temporal_flicker
from supergen_dask.quality import prompted_colour, step_grid_lines
from supergen_dask.spec import AnchorSettings, CacheSettings, RenderSpec, ShiftSettings

__all__ = [
    "EvalConfig",
    "standard_configs",
    "evaluate",
    "summarise",
    "markdown_table",
    "machine_info",
    "write_report",
    "merge_reports",
]


@dataclass(frozen=True)
class EvalConfig:
    """A named set of spec overrides; ``native`` configs render at the model's own size."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    native: bool = False


def standard_configs(steps: int, strengths=(0.6, 0.9), anchor: float = 0.5) -> list[EvalConfig]:
    """The comparison of the quality report; ``strengths`` are re-noise levels t (fractions of
    the schedule refined with tiles), ``anchor`` the sketch-anchoring strength tried. The three
    references (the model at its own size, the whole canvas, tiles without a sketch) run without
    the residual cache, whatever the model's default: they stand for the model itself; the tiled
    configurations run with the model's defaults."""
    model_only = CacheSettings(enabled=False)
    out = [
        EvalConfig(
            "native", {"tile_policy": "whole", "refine_steps": steps, "cache": model_only}, native=True
        ),
        EvalConfig("direct", {"tile_policy": "whole", "refine_steps": steps, "cache": model_only}),
        EvalConfig("tiles-no-sketch", {"refine_steps": steps, "cache": model_only}),
    ]
    for t in strengths:
        k = max(1, round(t * steps))
        out.append(
            EvalConfig(f"fixed-tiles@{t:g}", {"refine_steps": k, "shift": ShiftSettings(enabled=False)})
        )
        out.append(EvalConfig(f"supergen@{t:g}", {"refine_steps": k}))
    if anchor > 0:
        t = max(strengths)
        out.append(
            EvalConfig(
                f"supergen-anchor@{t:g}",
                {"refine_steps": max(1, round(t * steps)), "anchor": AnchorSettings(strength=anchor)},
            )
        )
    return out


def _clean_reference(spec: RenderSpec, plan, frames: int) -> dict[str, float | None]:
    """The metrics of the prompt's clean procedural video at the render's size and tile borders."""
    scene = Scene.from_prompt(spec.prompt, seed=spec.seed)
    clean = render_scene(scene, spec.height, spec.width, frames)
    mask = object_mask(clean, scene.colour_rgb)
    rows, cols = step_grid_lines(plan, plan.refine.last)
    seam = seam_score(clean, rows, cols, exclude_mask=mask) if len(rows) or len(cols) else None
    return {
        "clean_seam_score_last": None if seam is None or not np.isfinite(seam) else float(seam),
        "clean_temporal_flicker": float(temporal_flicker(clean, exclude_mask=mask)),
    }


def evaluate(
    prompts: list[str],
    scales: list[float],
    configs: list[EvalConfig],
    client,
    root: str | Path,
    *,
    model: str = "toy-wan",
    num_inference_steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    chunk: int | None = 16,
    keep_latents: bool = False,
) -> list[dict[str, Any]]:
    """Render every (prompt, scale, config) and return one row of metrics per render.

    Renders run ``chunk`` at a time (None: all at once). Unless ``keep_latents``, each finished
    render's intermediate latents and scheduler state are pruned
    (``RenderStore.prune_intermediate``): at 16x a render keeps hundreds of MB per step otherwise.
    """
    info = model_info(model)
    steps = num_inference_steps or info.default_steps
    jobs: list[tuple[str, float, EvalConfig, RenderSpec]] = []
    for prompt in prompts:
        if prompted_colour(prompt) is None:
            raise ValueError(f"evaluation prompts must name a toy-grammar colour: {prompt!r}")
        for cfg in configs:
            for scale in [1.0] if cfg.native else scales:
                side = math.sqrt(scale)
                f = info.spatial_factor
                h = int(round(info.native_height * side / f)) * f
                w = int(round(info.native_width * side / f)) * f
                spec = RenderSpec(
                    prompt=prompt,
                    model=model,
                    height=h,
                    width=w,
                    num_inference_steps=steps,
                    seed=seed,
                    **cfg.overrides,
                )
                jobs.append((prompt, scale, cfg, spec))
    t0 = time.perf_counter()
    results: list[RenderResult] = []
    size = chunk or len(jobs)
    for i in range(0, len(jobs), size):
        part = render_batch([j[3] for j in jobs[i : i + size]], client, root, progress=progress)
        if not keep_latents:
            for result in part:
                store = result.open_store(mode="r+")
                if not store.attrs.get("pruned"):
                    store.prune_intermediate()
        results += part
    rows = []
    for (prompt, scale, cfg, spec), result in zip(jobs, results, strict=True):
        q = dict(result.quality or {})
        plan = result.plan
        row = {
            "prompt": prompt,
            "scale": scale,
            "config": cfg.name,
            "size": f"{spec.width}x{spec.height}",
            "refine_steps": plan.spec.refine_steps,
            "refine_tile_steps": len(plan.refine.steps) * plan.refine.grid.n_tiles,
            "render_dir": str(result.render_dir),
            "store_path": str(result.store_path),
            **q,
        }
        if plan.cache is not None:
            row["cache"] = cache_summary(result.open_store(), plan)
        if plan.refine.grid.n_tiles > 1:
            row.update(_clean_reference(plan.spec, plan, plan.pixel_frames))
        rows.append(row)
    for row in rows:
        row["batch_seconds"] = round(time.perf_counter() - t0, 1)
    return rows


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (config, scale): means over prompts, accuracy = share with exactly one object."""
    out = []
    keys = sorted({(r["config"], r["scale"]) for r in rows}, key=lambda k: (k[1], _order(k[0]), k[0]))
    for name, scale in keys:
        group = [r for r in rows if r["config"] == name and r["scale"] == scale]
        out.append(
            {
                "config": name,
                "scale": scale,
                "prompts": len(group),
                "exactly_one": _mean([r.get("exactly_one") for r in group]),
                "seam_score_last": _mean([r.get("seam_score_last") for r in group]),
                "seam_score_mean": _mean([r.get("seam_score_mean") for r in group]),
                "clean_seam_score_last": _mean([r.get("clean_seam_score_last") for r in group]),
                "detail_gain": _mean([r.get("detail_gain") for r in group]),
                "temporal_flicker": _mean([r.get("temporal_flicker") for r in group]),
                "clean_temporal_flicker": _mean([r.get("clean_temporal_flicker") for r in group]),
            }
        )
    return out


def _order(name: str) -> int:
    for i, prefix in enumerate(
        ("native", "direct", "tiles-no-sketch", "fixed-tiles", "supergen@", "supergen-anchor")
    ):
        if name.startswith(prefix):
            return i
    return 99


def markdown_table(summary: list[dict[str, Any]]) -> str:
    def fmt(v, pct=False):
        if v is None:
            return "-"
        return f"{100 * v:.0f}%" if pct else f"{v:.2f}"

    lines = [
        "| scale | config | prompts | exactly one object | seam score (last grid) | clean video, same borders | "
        "seam score (mean over grids) | detail gain | flicker | clean flicker |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['scale']:g}x | {s['config']} | {s['prompts']} | {fmt(s['exactly_one'], True)} | "
            f"{fmt(s['seam_score_last'])} | {fmt(s['clean_seam_score_last'])} | {fmt(s['seam_score_mean'])} | "
            f"{fmt(s['detail_gain'])} | {fmt(s['temporal_flicker'])} | {fmt(s['clean_temporal_flicker'])} |"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Where a report's renders ran."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_report(
    rows: list[dict[str, Any]],
    out: str | Path,
    settings: dict[str, Any],
    parts: list[dict[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """``<out>.json`` (every render's metrics, the summary, settings, machine) and ``<out>.md``.

    ``parts`` (from ``merge_reports``) lists the runs a merged report is made of, each with its
    own machine, scales and configurations.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    machine = machine_info()
    payload = {"settings": settings, "machine": machine, "summary": summary, "renders": rows}
    if parts:
        payload["parts"] = parts
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    if parts:
        where = "\n".join(
            f"- scales {', '.join(f'{x:g}x' for x in p['scales'])}, configurations {', '.join(p['configs'])}: "
            f"{p['renders']} renders on {p['machine']}"
            for p in parts
        )
    else:
        where = f"Machine: {machine}."
    md_path.write_text(
        f"# Quality report\n\nModel `{settings.get('model')}`, {settings.get('num_inference_steps')} steps, "
        f"seed {settings.get('seed')}, {len({r['prompt'] for r in rows})} prompts.\n\n{where}\n\n"
        + markdown_table(summary)
        + "\n"
    )
    return json_path, md_path


def merge_reports(paths: list[str | Path], out: str | Path) -> tuple[Path, Path]:
    """One report from several ``evaluate`` runs of the same model, steps and seed (say, one scale
    on a GPU machine and another on a laptop); each run's machine is kept with its renders.

    Raises
    ------
    ValueError
        If the runs differ in model, steps or seed, or render the same (prompt, scale, config).
    """
    if not paths:
        raise ValueError("nothing to merge")
    reports = [json.loads(Path(p).read_text()) for p in paths]
    keys = ("model", "num_inference_steps", "seed")
    first = reports[0]["settings"]
    for path, rep in zip(paths, reports, strict=True):
        diff = [k for k in keys if rep["settings"].get(k) != first.get(k)]
        if diff:
            raise ValueError(f"{path} differs from {paths[0]} in {diff}; only like runs merge")
    rows, seen, parts = [], set(), []
    for path, rep in zip(paths, reports, strict=True):
        for row in rep["renders"]:
            key = (row["prompt"], row["scale"], row["config"])
            if key in seen:
                raise ValueError(f"{path} repeats render {key}")
            seen.add(key)
            rows.append({**row, "machine": rep["machine"]})
        parts.append(
            {
                "report": str(path),
                "machine": rep["machine"],
                "scales": sorted({r["scale"] for r in rep["renders"]}),
                "configs": rep["settings"].get("configs"),
                "renders": len(rep["renders"]),
            }
        )
    settings = {
        **{k: first.get(k) for k in keys},
        "scales": sorted({s for r in reports for s in r["settings"].get("scales", [])}),
        "strengths": sorted({s for r in reports for s in r["settings"].get("strengths", [])}),
        "anchor": first.get("anchor"),
        "configs": sorted({c for r in reports for c in r["settings"].get("configs", [])}, key=_order),
        "prompts": sorted({p for r in reports for p in r["settings"].get("prompts", [])}),
    }
    return write_report(rows, out, settings, parts)
