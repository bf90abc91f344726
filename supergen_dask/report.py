"""A report people look at: one static HTML page (plus JSON) over any number of renders.

Per render: a contact sheet of the video and one of the sketch beside it, the spec, stage
timings of each session (from the session records), the quality figures, where the tiles ran
(workers and GPUs, from the tile stats), the cache's skip rate when the render used a cache
(tiles whose ``computed`` stat is 0), and links to the mp4s and the store. ``supergen report
DIR...`` writes it for existing renders; ``supergen batch`` writes it for its renders.

Reading a render (``collect_render``) is separate from writing the page (``render_html``, pure),
so the page can be tested from plain dicts.
"""

from __future__ import annotations

import html
import json
import os
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from storage import Location

__all__ = ["collect_render", "render_html", "write_report", "placement", "cache_skip_rate"]


def placement(
    stats: dict[str, np.ndarray], done: np.ndarray, names: dict[str, str], field: str
) -> dict[str, int]:
    """Finished tiles per worker (``field="worker"``) or GPU (``"gpu"``), named through the session
    records' code -> name maps."""
    if field not in stats:
        return {}
    codes = stats[field][done]
    out: dict[str, int] = {}
    for code in codes[np.isfinite(codes)]:
        name = names.get(str(int(code)), str(int(code)))
        out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items()))


def cache_skip_rate(stats: dict[str, np.ndarray], done: np.ndarray) -> float | None:
    """Fraction of finished tile steps served from the cache (``computed == 0``), or None when
    every finished tile was computed (no cache, or a cache that never hit)."""
    if "computed" not in stats or not done.any():
        return None
    computed = stats["computed"][done]
    skipped = int(np.sum(computed == 0))
    return skipped / computed.size if skipped else None


def _sheet(frames: np.ndarray, path: Location) -> str:
    from supergen_dask.preview import contact_sheet, write_png

    write_png(contact_sheet(frames, 4), path)
    return path.name


def _link(target: Location, out_dir: Location) -> str:
    """A link from the page in ``out_dir`` to ``target``: relative where both are on one
    filesystem (links that survive moving both), else the target's URL."""
    if target.is_local and out_dir.is_local:
        return os.path.relpath(target.local_path.absolute(), out_dir.local_path.absolute())
    if target.protocol == out_dir.protocol and not target.is_local:
        return posixpath.relpath(target.path, out_dir.path)
    return target.url


def collect_render(render_dir: str | Path | Location, out_dir: str | Path | Location) -> dict[str, Any]:
    """Everything the report shows about one render directory; pictures are written to
    ``out_dir`` (a missing video or store is recorded as such, never an error). Either may be a
    local path, an fsspec URL or a ``storage.Location``."""
    from storage import RenderStore, read_video
    from supergen_dask.config import location
    from supergen_dask.graph import SKETCH_VIDEO_NAME, STORE_NAME, VIDEO_NAME

    render_dir, out_dir = location(render_dir), location(out_dir)
    where = str(render_dir.local_path.resolve()) if render_dir.is_local else render_dir.url
    rec: dict[str, Any] = {"name": render_dir.name, "render_dir": where}

    def rel(p: Location) -> str:
        return _link(p, out_dir)

    try:
        store = RenderStore.open(render_dir / STORE_NAME, mode="r")
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        rec["error"] = f"no render store: {' '.join(str(exc).split())}"
        return rec
    attrs = store.attrs
    rec["store"] = rel(render_dir / STORE_NAME)
    rec["spec"] = attrs.get("spec", {})
    rec["quality"] = attrs.get("quality")
    sessions = attrs.get("sessions", [])
    rec["sessions"] = [
        {k: s.get(k) for k in ("session", "status", "started", "seconds", "tasks", "stages")}
        for s in sessions
    ]
    rec["status"] = sessions[-1].get("status", "?") if sessions else "not started"
    workers, gpus = {}, {}
    for s in sessions:
        workers.update(s.get("workers") or {})
        gpus.update(s.get("gpus") or {})
    rec["tiles"], rec["workers"], rec["gpus"] = {}, {}, {}
    skips = []
    for st in store.layout.stages:
        stats, done = store.tile_stats(st.name), store.done_mask(st.name)
        rec["tiles"][st.name] = f"{int(done.sum())}/{done.size}"
        for name, n in placement(stats, done, workers, "worker").items():
            rec["workers"][name] = rec["workers"].get(name, 0) + n
        for name, n in placement(stats, done, gpus, "gpu").items():
            rec["gpus"][name] = rec["gpus"].get(name, 0) + n
        if st.name == "refine":
            skips.append(cache_skip_rate(stats, done))
    if skips and skips[0] is not None:
        rec["cache_skip_rate"] = skips[0]
    stem = render_dir.name
    video = render_dir / VIDEO_NAME
    if video.exists():
        rec["video"] = rel(video)
        with video.local_copy() as local:
            frames = read_video(local)
        rec["poster"] = _sheet(frames, out_dir / f"{stem}-video.png")
    if store.layout.sketch_pixels is not None and store.task_is_done("upscale"):
        rec["sketch"] = _sheet(store.read_sketch_pixels(), out_dir / f"{stem}-sketch.png")
    if (render_dir / SKETCH_VIDEO_NAME).exists():
        rec["sketch_video"] = rel(render_dir / SKETCH_VIDEO_NAME)
    return rec


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
.render{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}
.pics{display:flex;gap:1.5em;flex-wrap:wrap}.pics figure{margin:0}
.pics img{image-rendering:pixelated;max-width:100%;height:120px;border:1px solid #999}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
.failed,.killed,.running{color:#b00}.finished{color:#070}code{font-size:90%}
"""


# marks each picture the browser could show (``data-shown``), so a headless check can count them
_MARK_SHOWN = (
    "<script>addEventListener('load',()=>document.querySelectorAll('img').forEach("
    "i=>{if(i.complete&&i.naturalWidth>0)i.dataset.shown='1'}))</script>"
)


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...] | None = None) -> str:
    h = "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{h}{body}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _render_section(i: int, r: dict[str, Any]) -> str:
    e = html.escape
    spec = r.get("spec") or {}
    title = e(str(spec.get("prompt") or r["name"]))
    parts = [f'<section class="render" id="render-{i}" data-render="{e(r["name"])}">']
    parts.append(
        f'<h2>{title} <span class="{e(str(r.get("status", "")))}">({e(str(r.get("status", "?")))})</span></h2>'
    )
    if "error" in r:
        parts.append(f"<p class=failed>{e(r['error'])}</p></section>")
        return "".join(parts)
    pics = []
    if "poster" in r:
        pics.append(
            f'<figure><img class="poster" src="{e(r["poster"])}" alt="video frames"><figcaption>video</figcaption></figure>'
        )
    if "sketch" in r:
        pics.append(
            f'<figure><img class="sketch" src="{e(r["sketch"])}" alt="sketch frames"><figcaption>sketch</figcaption></figure>'
        )
    parts.append(f'<div class="pics">{"".join(pics) or "<p>no pictures yet</p>"}</div>')
    links = [
        f'<a href="{e(r[k])}">{label}</a>'
        for k, label in (("video", "video.mp4"), ("sketch_video", "sketch.mp4"), ("store", "render.zarr"))
        if k in r
    ]
    parts.append(f"<p>{' · '.join(links)} · <code>{e(r['render_dir'])}</code></p>")
    keys = (
        "model",
        "height",
        "width",
        "num_frames",
        "num_inference_steps",
        "refine_steps",
        "guidance_scale",
        "seed",
        "scheduler",
        "dtype",
    )
    parts.append("<h3>spec</h3>" + _table([(k, spec.get(k)) for k in keys if k in spec]))
    stage_rows = []
    for s in r.get("sessions", []):
        for stage, t in (s.get("stages") or {}).items():
            stage_rows.append(
                (s.get("session"), s.get("status"), stage, t["tasks"], f"{t['wall']:.2f}", f"{t['busy']:.2f}")
            )
        if not s.get("stages"):
            stage_rows.append(
                (s.get("session"), s.get("status"), "(all)", s.get("tasks"), _fmt(s.get("seconds")), "")
            )
    parts.append(
        "<h3>stage timings (s)</h3>"
        + _table(stage_rows, ("session", "status", "stage", "tasks", "wall", "busy"))
    )
    q = r.get("quality") or {}
    if q:
        parts.append(
            "<h3>quality</h3>"
            + _table([(k, _fmt(v)) for k, v in q.items() if not isinstance(v, dict | list)])
        )
    place = [("worker", k, v) for k, v in r.get("workers", {}).items()] + [
        ("gpu", k, v) for k, v in r.get("gpus", {}).items()
    ]
    parts.append("<h3>placement (finished tiles)</h3>" + _table(place, ("kind", "where", "tiles")))
    tiles = ", ".join(f"{k} {v}" for k, v in r.get("tiles", {}).items())
    cache = f"; cache skip rate {r['cache_skip_rate']:.1%}" if "cache_skip_rate" in r else ""
    parts.append(f"<p>tiles done: {e(tiles)}{e(cache)}</p></section>")
    return "".join(parts)


def render_html(records: list[dict[str, Any]], title: str = "supergen renders") -> str:
    """The report page for ``collect_render`` records (pure)."""
    statuses = [r.get("status", "?") for r in records]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    body = "".join(_render_section(i, r) for i, r in enumerate(records))
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p id="counts">{len(records)} renders: {html.escape(counts)}</p>{body}{_MARK_SHOWN}</body></html>'
    )


def write_report(
    render_dirs: list[str | Path | Location], out_dir: str | Path | Location, title: str = "supergen renders"
) -> Path | Location:
    """Write ``index.html``, ``report.json`` and the pictures into ``out_dir`` (a local folder, an
    fsspec URL or a ``storage.Location``); returns the page (a ``Path`` when local)."""
    from supergen_dask.config import location

    out_dir = location(out_dir)
    out_dir.mkdir()
    records = [collect_render(d, out_dir) for d in render_dirs]
    (out_dir / "report.json").write_text(
        json.dumps({"title": title, "renders": records}, indent=1, default=str)
    )
    page = out_dir / "index.html"
    page.write_text(render_html(records, title))  # whole or not at all
    return page.native()
