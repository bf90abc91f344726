"""Stage timings of a render session from its task receipts (pure: lists of dicts in, dict out)."""

from __future__ import annotations

from typing import Any

__all__ = ["stage_of", "stage_timings", "STAGE_ORDER"]

STAGE_ORDER = ("warm", "prompt", "sketch", "upscale", "refine", "decode", "encode", "quality")


def stage_of(receipt: dict[str, Any]) -> str:
    """The stage a task receipt belongs to (``sketch``/``refine`` from a tile task's name)."""
    kind = str(receipt.get("task", "other"))
    name = str(receipt.get("name", ""))
    if kind in ("denoise", "predict", "init"):
        return "sketch" if name.startswith("sketch") else "refine"
    if kind == "start":
        return "upscale"
    if kind == "preview":
        return "encode"
    return kind


def stage_timings(receipts: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per stage: ``tasks`` run, ``busy`` seconds (sum over tasks) and ``wall`` seconds (first
    start to last finish). Skipped tasks (already done) are left out; stages in run order."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in receipts:
        if r.get("skipped") or "finished" not in r or "seconds" not in r:
            continue
        end, secs = float(r["finished"]), float(r["seconds"])
        spans.setdefault(stage_of(r), []).append((end - secs, end))
    out = {}
    for name in sorted(spans, key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else 99, s)):
        s = spans[name]
        out[name] = {
            "tasks": len(s),
            "busy": round(sum(b - a for a, b in s), 4),
            "wall": round(max(b for _, b in s) - min(a for a, _ in s), 4),
        }
    return out
