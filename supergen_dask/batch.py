"""The nightly runner: a YAML file of render requests, run unattended and idempotently.

A batch file holds ``defaults`` (any ``RenderSpec`` field) and a list of ``renders`` (each a
mapping of spec fields that override the defaults)::

    defaults: {model: toy-wan, num_frames: 17, seed: 0}
    renders:
      - prompt: a red circle moving right
        size: 256x128          # WIDTHxHEIGHT, or height/width
      - {prompt: a green square moving left, frames: 9, seed: 3, output: {crf: 12}}

Short names: ``size`` (``WIDTHxHEIGHT``), ``frames`` (``num_frames``), ``steps``
(``num_inference_steps``), ``k`` (``refine_steps``). Every render goes to
``default_render_dir(plan, root)``: named by the resolved spec's hash, so running the file again
skips finished renders (no model work), resumes interrupted ones and retries failed ones.

Entries are checked one by one before anything runs: a bad entry is reported with its index and
reason and the valid ones still render. Exit codes of ``supergen batch``: ``0`` every render
finished; ``1`` a render failed after its retries (finished work kept; run the batch again);
``2`` bad input: an invalid entry (the valid ones were still rendered) or an unreadable file.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supergen_dask.spec import SpecError, SpecFileError, load_spec_file

__all__ = [
    "BatchEntry",
    "BatchOutcome",
    "BatchFileError",
    "load_batch",
    "entry_fields",
    "is_finished",
    "run_batch",
    "summary_table",
    "batch_exit_code",
    "ALIASES",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

ALIASES = {"frames": "num_frames", "steps": "num_inference_steps", "k": "refine_steps"}
NESTED = ("shift", "cache", "anchor", "output")


class BatchFileError(ValueError):
    """The batch file as a whole cannot be used (unreadable, no ``renders`` list, bad defaults)."""


@dataclass
class BatchEntry:
    """One entry of a batch file: its resolved plan and directory, or why it is invalid."""

    index: int
    fields: dict[str, Any]
    plan: Any = None  # RenderPlan
    render_dir: Any = None  # Path (local) or storage.Location
    error: str | None = None

    @property
    def label(self) -> str:
        prompt = self.fields.get("prompt") if isinstance(self.fields, dict) else None
        return str(prompt) if prompt else f"entry {self.index}"


@dataclass
class BatchOutcome:
    """What happened to one entry: ``finished``, ``skipped`` (already finished), ``failed`` or
    ``invalid``; ``attempts`` counts the runs (retries included)."""

    entry: BatchEntry
    status: str
    attempts: int = 0
    seconds: float = 0.0
    tile_tasks_run: int = 0
    error: str | None = None
    receipts: list[dict] = field(default_factory=list, repr=False)


def _parse_size(value: Any) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` (or ``[width, height]``) -> ``(height, width)``."""
    if isinstance(value, str) and "x" in value.lower():
        w, _, h = value.lower().partition("x")
        try:
            return int(h), int(w)
        except ValueError:
            pass
    elif isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[1]), int(value[0])
    raise SpecError("size", f"expected WIDTHxHEIGHT such as 1920x1080, got {value!r}")


def entry_fields(defaults: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """An entry's ``RenderSpec`` fields: short names expanded, nested settings (``shift``,
    ``output``, ...) merged key by key over the defaults'. Raises ``SpecError``."""
    out: dict[str, Any] = {}
    for source in (defaults, entry):
        if not isinstance(source, dict):
            raise SpecError("entry", f"expected a mapping of spec fields, got {type(source).__name__}")
        for key, value in source.items():
            key = ALIASES.get(key, key)
            if key == "size":
                if "height" in source or "width" in source:
                    raise SpecError("size", "give either size or height/width, not both")
                out["height"], out["width"] = _parse_size(value)
            elif key in NESTED and isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


def load_batch(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """``(defaults, entries, options)`` of a batch file (YAML or JSON). ``options`` holds the
    top-level ``store_root`` and ``retries`` when given. Raises ``BatchFileError``."""
    try:
        data = load_spec_file(path)
    except SpecFileError as exc:
        raise BatchFileError(str(exc)) from None
    known = {"defaults", "renders", "store_root", "retries"}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise BatchFileError(f"{path}: unknown top-level key {unknown[0]!r}; allowed: {sorted(known)}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise BatchFileError(f"{path}: defaults must be a mapping of spec fields")
    entries = data.get("renders")
    if not isinstance(entries, list) or not entries:
        raise BatchFileError(f"{path}: needs a non-empty list `renders:` of render entries")
    options = {k: data[k] for k in ("store_root", "retries") if k in data}
    return defaults, entries, options


def _image_check(fields: dict[str, Any], base: Path) -> None:
    image = fields.get("image")
    if isinstance(image, str):
        p = Path(image) if Path(image).is_absolute() else base / image
        if not p.is_file():
            raise SpecError("image", f"no such image file: {p}")
        fields["image"] = str(p)


def resolve_entries(
    defaults: dict[str, Any], entries: list[Any], root: str | Path | None, base: str | Path = "."
) -> list[BatchEntry]:
    """Validate and plan every entry (pure planning, nothing written). Invalid entries carry
    their reason in ``error``; relative image paths are taken from ``base`` (the file's folder)."""
    from supergen_dask.estimate import check_disk
    from supergen_dask.graph import default_render_dir
    from supergen_dask.plan import plan_render
    from supergen_dask.preflight import check_output_dir
    from supergen_dask.spec import RenderSpec

    out = []
    for i, raw in enumerate(entries):
        entry = BatchEntry(i, raw if isinstance(raw, dict) else {})
        try:
            fields = entry_fields(defaults, raw)
            _image_check(fields, Path(base))
            entry.fields = fields
            entry.plan = plan_render(RenderSpec.from_dict(fields))
            render_dir = default_render_dir(entry.plan, root)
            check_output_dir(render_dir)  # where it goes is checked before anything is written
            check_disk(entry.plan, render_dir)
            entry.render_dir = render_dir
        except SpecError as exc:
            entry.error = f"invalid spec: {exc}"
        except (ValueError, OSError) as exc:  # limits, model directories, output directory
            entry.error = " ".join(str(exc).split())
        out.append(entry)
    return out


def is_finished(render_dir, token: str) -> bool:
    """Whether ``render_dir`` (a path, URL or ``storage.Location``) holds this very render,
    finished (its video written and a session recorded as finished): such a render is skipped
    without touching the cluster."""
    from storage import RenderStore
    from supergen_dask.config import location
    from supergen_dask.graph import STORE_NAME, VIDEO_NAME

    render_dir = location(render_dir)
    if not (render_dir / VIDEO_NAME).exists():
        return False
    try:
        store = RenderStore.open(render_dir / STORE_NAME, mode="r")
    except (FileNotFoundError, ValueError, KeyError, OSError):
        return False
    if store.attrs.get("plan", {}).get("token") != token:
        return False
    return any(s.get("status") == "finished" for s in store.attrs.get("sessions", []))


def _run_one(entry: BatchEntry, client, retries: int) -> BatchOutcome:
    from supergen_dask.dirlock import mark_dead_sessions, render_dir_lock
    from supergen_dask.graph import RenderError, start_render

    t0 = time.perf_counter()
    render_dir = entry.render_dir
    if is_finished(render_dir, entry.plan.token):
        return BatchOutcome(entry, "skipped")
    error = None
    with render_dir_lock(render_dir):
        for attempt in range(1, retries + 2):
            try:
                with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                    from storage import RenderStore
                    from supergen_dask.config import location
                    from supergen_dask.graph import STORE_NAME

                    mark_dead_sessions(RenderStore.open(location(render_dir) / STORE_NAME))
                result = start_render(entry.plan, render_dir, client).wait(progress=False)
            except (RenderError, OSError) as exc:
                error = " ".join(str(exc).split())
                continue
            return BatchOutcome(
                entry,
                "finished",
                attempt,
                time.perf_counter() - t0,
                result.summary()["tile_tasks_run"],
                receipts=result.receipts,
            )
    return BatchOutcome(entry, "failed", retries + 1, time.perf_counter() - t0, error=error)


def run_batch(
    entries: list[BatchEntry],
    client,
    *,
    retries: int = 1,
    parallel: int = 2,
    on_outcome: Callable[[BatchOutcome], None] | None = None,
) -> list[BatchOutcome]:
    """Run every valid entry on ``client`` (``parallel`` renders in flight at once, their tasks
    interleaved by the scheduler), retrying a failed render up to ``retries`` times (a retry
    resumes it: finished tiles are kept). Returns an outcome per entry, in file order."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    outcomes: dict[int, BatchOutcome] = {}
    seen: dict[str, int] = {}
    valid = []
    for e in entries:
        if e.error is not None:
            outcomes[e.index] = BatchOutcome(e, "invalid", error=e.error)
        elif e.plan.token in seen:  # the same render twice in one file is rendered once
            outcomes[e.index] = BatchOutcome(e, "skipped", error=f"same render as entry {seen[e.plan.token]}")
        else:
            seen[e.plan.token] = e.index
            valid.append(e)

    def run(e: BatchEntry) -> BatchOutcome:
        o = _run_one(e, client, retries)
        if on_outcome is not None:
            on_outcome(o)
        return o

    with ThreadPoolExecutor(parallel, thread_name_prefix="supergen-batch") as pool:
        for o in pool.map(run, valid):
            outcomes[o.entry.index] = o
    return [outcomes[e.index] for e in entries]


def batch_exit_code(outcomes: list[BatchOutcome]) -> int:
    """``1`` if a render failed, else ``2`` if an entry was invalid, else ``0``."""
    statuses = {o.status for o in outcomes}
    if "failed" in statuses:
        return EXIT_FAILED
    if "invalid" in statuses:
        return EXIT_BAD_INPUT
    return EXIT_OK


def summary_table(outcomes: list[BatchOutcome]) -> str:
    """A plain-text table: one row per entry (index, status, attempts, seconds, tile tasks run,
    directory or reason)."""
    rows = [("#", "status", "tries", "seconds", "tiles run", "render / reason")]
    for o in outcomes:
        where = o.error if o.status in ("invalid", "failed") else str(o.entry.render_dir)
        if o.status == "skipped" and o.error:
            where = f"{o.entry.render_dir} ({o.error})"
        rows.append(
            (
                str(o.entry.index),
                o.status,
                str(o.attempts),
                f"{o.seconds:.1f}",
                str(o.tile_tasks_run),
                where or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5] for r in rows]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("finished", "skipped", "failed", "invalid")}
    lines.append("total: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def print_outcome(o: BatchOutcome, total: int) -> None:
    """One progress line per entry as it ends (stderr)."""
    what = o.error if o.status in ("invalid", "failed") else o.entry.render_dir
    print(
        f"entry {o.entry.index} of {total}: {o.status}: {o.entry.label} -> {what}",
        file=sys.stderr,
        flush=True,
    )
