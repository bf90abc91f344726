"""Retention: which steps of a render stay in its store, and freeing the rest while it runs.

A step's latents stay if retention keeps them (``kept_steps``: every ``keep_every``-th schedule
step and each stage's last); its scheduler history and guidance-branch outputs only with
``keep_history``. Whatever else a step wrote is deleted by one ``free_<stage>_<step>`` task, the
only one that touches those chunks after their writers, once every task that reads them is done
(``reader_step``): the unfinished work of a killed render never needs a freed chunk, so resuming
stays exact. ``supergen verify`` and the repair on resume know which chunks are gone by design
(``freed_arrays``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from storage import RenderStore
    from supergen_dask.plan import RenderPlan, StagePlan

__all__ = ["kept_steps", "reader_step", "free_task", "freed_arrays", "free_step"]


def kept_steps(steps: tuple[int, ...], keep_every: int) -> tuple[int, ...]:
    """The steps whose latents retention keeps: ``(step + 1) % keep_every == 0`` and the last."""
    return tuple(s for s in steps if s == steps[-1] or (keep_every > 0 and (s + 1) % keep_every == 0))


def reader_step(stage: StagePlan, step: int, cached: bool = False) -> int:
    """The step of ``stage`` whose tiles, once all done, leave no task that reads ``step``'s chunks.

    A tile of step s + 1 reads step s (latents and history). With the guidance branches as
    separate tasks, step s + 1 is computed by the branch tasks of step s + 2 from step s, and
    both branches read it: all of them are finished once step s + 2 is marked done (its marker
    is written by a task that waits for both). With the residual cache (``cached``), the decision
    of step s + 2 reads step s's cache chunks (the gain between two computed steps). The last step
    is read by nothing after it.
    """
    return min(step + (2 if stage.split_guidance or cached else 1), stage.last)


def _cached(plan: RenderPlan, stage: StagePlan) -> bool:
    return plan.cache is not None and stage.name == "refine"


def free_task(stage: str, step: int) -> str:
    """The name (and done marker) of the task freeing ``step`` of ``stage``."""
    return f"free_{stage}_{step}"


def freed_arrays(plan: RenderPlan, store: RenderStore) -> dict[tuple[str, int], tuple[str, ...]]:
    """``(stage, step) -> arrays`` whose chunks of that step may be gone by design: retention
    frees them and every task that reads them is done (their free task may have run)."""
    out: dict[tuple[str, int], tuple[str, ...]] = {}
    for st in plan.stages:
        layout = store.stage(st.name)
        done = store.done_mask(st.name)
        for step in st.steps:
            names = layout.freed(step)
            if names and done[st.steps.index(reader_step(st, step, _cached(plan, st)))].all():
                out[(st.name, step)] = names
    return out


def free_step(plan: RenderPlan, url: str, instance: str, stage: str, step: int, *deps) -> dict:
    """Delete the chunks of ``step`` that retention does not keep, once nothing reads them.

    Raises ``RuntimeError`` (and deletes nothing) if a tile that reads them is unfinished: the
    graph orders this task after those readers, and a store that says otherwise is not freed.
    """
    from storage import RenderStore, delete_step_chunks
    from supergen_dask.tasks import worker_name

    t0 = time.perf_counter()
    task = free_task(stage, step)
    store = RenderStore.cached(url, instance)
    receipt = {"task": "free", "name": task, "worker": worker_name()}
    if store.task_is_done(task):
        return {**receipt, "skipped": True, "seconds": time.perf_counter() - t0}
    st = plan.stage(stage)
    reader = reader_step(st, step, _cached(plan, st))
    pending = ~store.done_mask(stage)[st.steps.index(reader)]
    if pending.any():
        r, c = (int(v) for v in np.argwhere(pending)[0])
        raise RuntimeError(
            f"{task}: {stage} step {reader} tile ({r}, {c}) is unfinished and reads step {step}; "
            "nothing freed"
        )
    names = store.stage(stage).freed(step)
    delete_step_chunks(store, stage, step, names)
    store.mark_task_done(task)
    return {**receipt, "arrays": list(names), "seconds": time.perf_counter() - t0, "finished": time.time()}
