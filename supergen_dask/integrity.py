"""Finding chunks of a render that changed or vanished on disk, and making resume redo them.

Writers record a CRC-32 of every chunk before the done marker that vouches for it and readers
check it (``storage.checksums``), so a damaged chunk is never used: the task that reads it fails.
Two things here close the loop:

- ``repair_store`` (run whenever a render is reopened, i.e. on resume) checks the finished
  chunks that the remaining work will read, clears the done marker of every damaged one, and
  repeats for what those now need, so ``resume`` recomputes exactly the damaged work. Every task
  is deterministic, so the recomputed chunk has the bytes (and checksum) it had, and the work
  that consumed it before the damage stays valid: nothing downstream needs redoing.
- ``verify_store`` checks every finished chunk of a render (``supergen verify DIR``).

Chunks that retention deletes by design (``supergen_dask.retention.freed_arrays``) are neither
checked nor reported; a damaged tile whose inputs were freed is recomputed from its stage's start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from storage import ChunkCorruptError, Location, RenderStore
from storage.store import checked_arrays, start_arrays
from supergen_dask.geometry import TileKey
from supergen_dask.plan import RenderPlan, StagePlan
from supergen_dask.retention import free_task, freed_arrays

__all__ = ["VerifyReport", "repair_store", "verify_store", "verify_render"]

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """What ``verify_store`` checked and what it found (``problems``: one line per bad chunk)."""

    store: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    damaged: list[tuple] = field(default_factory=list)  # chunk ids, as ``repair_store`` clears them

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "ok" if self.ok else f"{len(self.problems)} corrupt"
        hint = "" if self.ok else "; `supergen verify --repair` then `supergen resume` recomputes them"
        return f"{self.store}: {self.checked} chunks checked, {state}{hint}"


def _problem(check) -> str | None:
    try:
        check()
    except ChunkCorruptError as exc:
        return str(exc)
    return None


def _has_checksums(store: RenderStore) -> bool:
    return "prompt_checksum" in store.root


def _image_reads(store: RenderStore, stage: str) -> list:
    """Checked reads of every chunk of a stage's image condition (canvas tiles, global embeddings)."""
    layout = store.stage(stage)
    reads = []
    if layout.image_channels:
        reads += [
            lambda r=r, c=c: store.read_tile(stage, "image", None, r, c)
            for r in range(layout.rows)
            for c in range(layout.cols)
        ]
    if layout.image_tokens:
        reads.append(lambda: store.read_image_embeds(stage))
    return reads


def _start_task(plan: RenderPlan, stage: str, row: int, col: int) -> str:
    """The task that wrote chunk (row, col) of a stage's input: refinement tiles encode their own
    start from the sketch (``start_<row>_<col>``); noise starts are one task."""
    if stage == "sketch":
        return "sketch_init"
    return f"start_{row}_{col}" if plan.sketch is not None else "refine_init"


# -- the chunks the remaining work reads ----------------------------------------------------------
def _needed(plan: RenderPlan, store: RenderStore, video_exists: bool) -> set[tuple]:
    """Finished chunks that unfinished work will read, as ``("tile", stage, step, row, col)``,
    ``("start", stage, row, col)``, ``("image", stage)`` (a stage's whole image condition),
    ``("prompt",)`` and ``("decoded", region index)``."""
    tasks = store.tasks_done()
    needed: set[tuple] = set()
    pending_tiles = False
    for st in plan.stages:
        done = store.done_mask(st.name)
        anchored = plan.anchored and st.name == "refine"
        for i, step in enumerate(st.steps):
            for key in st.keys(step):
                if done[i, key.row, key.col]:
                    continue
                pending_tiles = True
                if plan.spec.image is not None and tasks.get(f"image_{st.name}"):
                    needed.add(("image", st.name))
                if step == st.first or anchored:
                    y0, x0 = st.origin(key)
                    cells = st.grid.covering(y0, x0, st.grid.tile_h, st.grid.tile_w, st.offset(st.first))
                    needed |= {
                        ("start", st.name, r, c)
                        for r, c in cells
                        if tasks.get(_start_task(plan, st.name, r, c), False)
                    }
                if step != st.first:
                    needed |= {
                        ("tile", st.name, d.step, d.row, d.col)
                        for d in st.dependencies(key)
                        if done[i - 1, d.row, d.col]
                    }
    if pending_tiles and tasks.get("prompt"):
        needed.add(("prompt",))
    if plan.sketch is not None and not tasks.get("upscale"):
        sk = plan.sketch
        done = store.done_mask("sketch")
        needed |= {
            ("tile", "sketch", sk.last, k.row, k.col) for k in sk.keys(sk.last) if done[-1, k.row, k.col]
        }
    rf = plan.refine
    if plan.seam is not None:  # the seam pass reads the last two refinement steps
        seam, rdone = plan.seam, store.done_mask("refine")
        g = seam.grid
        for key in seam.keys():
            if store.is_done(seam.name, seam.step, key.row, key.col):
                continue
            y0, x0 = seam.origin(key)
            steps = [s for s in (seam.step - 1, seam.step) if s >= rf.first]
            needed |= {
                ("tile", "refine", s, k.row, k.col)
                for s in steps
                for k in rf.covering(s, y0, x0, g.tile_h, g.tile_w)
                if rdone[rf.steps.index(s), k.row, k.col]
            }
    final = plan.final
    done = store.done_mask(final.name)
    outputs_pending = not (tasks.get("encode") and video_exists) or "quality" not in store.attrs
    for index, reg in enumerate(plan.decode_regions()):
        if not tasks.get(f"decode_{reg.row}_{reg.col}"):
            wy, wx, wh, ww = reg.window
            needed |= {
                ("tile", final.name, k.step, k.row, k.col)
                for k in final.covering(final.last, wy, wx, wh, ww)
                if done[-1, k.row, k.col]
            }
        elif outputs_pending:
            needed.add(("decoded", index))
    return needed


def _check(plan: RenderPlan, store: RenderStore, chunk: tuple, gone: dict | None = None) -> str | None:
    kind = chunk[0]
    if kind == "tile":
        _, stage, step, row, col = chunk
        freed = (gone or {}).get((stage, step), ())
        for name in checked_arrays(store.stage(stage)):
            if name in freed:  # deleted by retention, as designed
                continue
            problem = _problem(lambda n=name: store.read_tile(stage, n, step, row, col))
            if problem:
                return problem
        return None
    if kind == "start":
        _, stage, row, col = chunk
        for name in start_arrays(store.stage(stage)):
            problem = _problem(lambda n=name: store.read_tile(stage, n, None, row, col))
            if problem:
                return problem
        return None
    if kind == "image":
        for read in _image_reads(store, chunk[1]):
            problem = _problem(read)
            if problem:
                return problem
        return None
    if kind == "prompt":
        return _problem(store.read_prompt_embeds)
    if kind == "decoded":
        return _problem(lambda: store.read_region_pixels(plan.decode_regions()[chunk[1]]))
    raise ValueError(f"unknown chunk kind {kind!r}")


def _redo(plan: RenderPlan, store: RenderStore, chunk: tuple, gone: dict | None = None) -> None:
    """Clear the done marker of the work that wrote ``chunk`` (and of the task freeing its step,
    which must free what the redo writes again).

    A tile whose inputs retention has freed is recomputed from its stage's start: every step up
    to it is redone (deterministic, so to the same bytes). In a stage whose guidance branches are
    separate tasks a step is finished by the next step's branch tasks, which a finished next step
    does not run again: there every step from the damaged one to the stage's last is redone.
    """
    kind = chunk[0]
    if kind == "tile":
        _, stage, step, row, col = chunk
        st: StagePlan = plan.stage(stage)
        if store.attrs.get("pruned") and step != st.first:
            raise RuntimeError(
                f"{store.url}: {stage} step {step} tile ({row}, {col}) is corrupt and the steps it is "
                "computed from were pruned; render again with --overwrite"
            )
        freed_inputs = step != st.first and (stage, step - 1) in (gone or {})
        lo = st.first if freed_inputs else step
        hi = st.last if st.split_guidance else step
        if freed_inputs:
            log.warning(
                "%s step %d tile (%d, %d): the step before it was freed by retention; redoing steps %d..%d",
                stage,
                step,
                row,
                col,
                lo,
                hi,
            )
        tasks = store.tasks_done()
        for s in range(hi, lo - 1, -1):
            keys = st.keys(s) if (lo, hi) != (step, step) else [TileKey(stage, step, row, col)]
            for key in keys:
                store.clear_done(stage, s, key.row, key.col)
            if tasks.get(free_task(stage, s)):
                store.clear_task_done(free_task(stage, s))
    elif kind == "start":
        store.clear_task_done(_start_task(plan, *chunk[1:]))
    elif kind == "image":  # the stage's condition is encoded again (deterministic: the same bytes)
        store.clear_task_done(f"image_{chunk[1]}")
    elif kind == "prompt":
        store.clear_task_done("prompt")
    elif kind == "decoded":
        reg = plan.decode_regions()[chunk[1]]
        store.clear_task_done(f"decode_{reg.row}_{reg.col}")


def repair_store(
    plan: RenderPlan, store: RenderStore, video_exists: bool = True, *, full: bool = False
) -> list[str]:
    """Check the finished chunks the unfinished work of ``plan`` will read; clear the done marker
    of each damaged one (and check what redoing it reads, until nothing new turns up).

    With ``full``, first check every finished chunk (``verify_store``) and clear the markers of
    all damaged ones, so that the next run also redoes damage that no pending work would read.
    Returns one line per damaged chunk (also logged as warnings). Stores made before checksums
    existed are left alone.
    """
    if not _has_checksums(store):
        return []
    found: list[str] = []
    checked: set[tuple] = set()
    gone = freed_arrays(plan, store)  # before any marker is cleared: what may be deleted already
    if full:
        report = verify_store(store, plan)
        for chunk in report.damaged:
            _redo(plan, store, chunk, gone)
            checked.add(chunk)
        found += [f"{p}; it will be recomputed" for p in report.problems]
    while True:
        todo = sorted(_needed(plan, store, video_exists) - checked, key=str)
        if not todo:
            return found
        for chunk in todo:
            checked.add(chunk)
            problem = _check(plan, store, chunk, gone)
            if problem:
                _redo(plan, store, chunk, gone)
                message = f"{problem}; it will be recomputed"
                log.warning(message)
                found.append(message)


def verify_store(store: RenderStore, plan: RenderPlan | None = None) -> VerifyReport:
    """Check every finished chunk of a render against its recorded checksum (reads them all)."""
    plan = plan or RenderPlan.from_dict(store.attrs["plan"])
    report = VerifyReport(store=store.url)
    if not _has_checksums(store):
        report.problems.append(f"{store.url}: made before checksums were recorded; nothing to verify")
        return report
    pruned = bool(store.attrs.get("pruned"))
    tasks = store.tasks_done()
    gone = freed_arrays(plan, store)

    def run(chunk, read, *args) -> None:
        report.checked += 1
        problem = _problem(lambda: read(*args))
        if problem:
            report.problems.append(problem)
            if chunk not in report.damaged:
                report.damaged.append(chunk)

    for st in (*plan.stages, *(() if plan.seam is None else (plan.seam,))):
        layout = store.stage(st.name)
        done = store.done_mask(st.name)
        sums = store.array(f"{st.name}/checksums")
        for i, step in enumerate(st.steps):
            if pruned and i < len(st.steps) - 1:
                continue
            names = ("latents",) if pruned else checked_arrays(layout)
            names = tuple(n for n in names if n not in gone.get((st.name, step), ()))
            for key in st.keys(step):
                if not done[i, key.row, key.col]:
                    continue
                if int(sums[i, key.row, key.col, 0]) < 0:
                    report.problems.append(
                        f"{st.name} step {step} tile ({key.row}, {key.col}): done but no checksum recorded"
                    )
                for name in names:
                    tile = ("tile", st.name, step, key.row, key.col)
                    run(tile, store.read_tile, st.name, name, step, key.row, key.col)
        for r, c in st.grid.tiles():
            if tasks.get(_start_task(plan, st.name, r, c)):
                for name in start_arrays(layout):
                    run(("start", st.name, r, c), store.read_tile, st.name, name, None, r, c)
        if tasks.get(f"image_{st.name}"):
            for read in _image_reads(store, st.name):
                run(("image", st.name), read)
    if tasks.get("prompt"):
        run(("prompt",), store.read_prompt_embeds)
    for index, reg in enumerate(plan.decode_regions()):
        if tasks.get(f"decode_{reg.row}_{reg.col}"):
            run(("decoded", index), store.read_region_pixels, reg)
    return report


def verify_render(render_dir: str | Path | Location) -> VerifyReport:
    """``verify_store`` of the store in a render directory (a path, an fsspec URL or a
    ``storage.Location``)."""
    from supergen_dask.config import location

    store = RenderStore.open(location(render_dir) / "render.zarr", mode="r")
    return verify_store(store)
