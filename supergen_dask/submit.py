"""Submit renders from a notebook or a script and keep working: handles, live progress, results.

``submit(specs, client)`` validates every spec, submits every render's tasks to one cluster (their
tasks interleave: each render's steps carry the same priorities, so no render starves) and
returns a ``RenderHandle`` per spec at once. A handle follows its render in a background thread
and gives its ``status``, ``progress()``, ``video``, the xarray view (``dataset()``, also while it
runs), ``stats``, ``errors`` and ``preview(step)`` (a decoded picture of any finished step).
``show_progress(handles)`` draws Dask's progress widget in Jupyter, or a bar in a terminal.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage import Location

__all__ = ["RenderHandle", "submit", "show_progress", "wait_all"]


class RenderHandle:
    """One submitted render. Nothing here blocks except ``result()`` and ``wait()``."""

    def __init__(self, job, spec=None):
        self.job = job
        self.plan = job.plan
        self.spec = spec if spec is not None else job.plan.spec
        self.render_dir: Path | Location = job.render_dir  # a Path when local
        self.total = len(job.futures)
        self._done = 0
        self._result = None
        self._error: BaseException | None = None
        self._finished = threading.Event()
        self._thread = threading.Thread(
            target=self._follow, name=f"render-{self.render_dir.name}", daemon=True
        )
        self._thread.start()

    def _count(self, receipt: dict) -> None:
        self._done += 1

    def _follow(self) -> None:
        try:
            self._result = self.job.wait(progress=False, on_task=self._count)
        except BaseException as exc:  # noqa: BLE001 - kept for .errors / .result()
            self._error = exc
        finally:
            self._finished.set()

    # -- state ----------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """``running``, ``finished`` or ``failed``."""
        if not self._finished.is_set():
            return "running"
        return "failed" if self._error is not None else "finished"

    def progress(self) -> tuple[int, int]:
        """(tasks finished, tasks submitted) in this session."""
        return (self.total if self.status == "finished" else self._done), self.total

    @property
    def errors(self) -> list[str]:
        """One line per failure (empty while running or when finished)."""
        return [] if self._error is None else [" ".join(str(self._error).split())]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the render ends (or ``timeout`` seconds); True if it has ended."""
        return self._finished.wait(timeout)

    def result(self, timeout: float | None = None):
        """The ``RenderResult``; raises the render's error (``RenderError``) if it failed."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"{self.render_dir} still running after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    # -- outputs --------------------------------------------------------------------------------
    @property
    def video(self) -> Path | Location | None:
        """The mp4, once written."""
        from supergen_dask.graph import VIDEO_NAME

        path = self.job.location / VIDEO_NAME
        return path.native() if self.status == "finished" and path.exists() else None

    @property
    def store_path(self) -> Path | Location:
        from supergen_dask.graph import STORE_NAME

        return (self.job.location / STORE_NAME).native()

    def dataset(self, stage: str = "refine"):
        """The render's latents as a lazy ``xarray.Dataset`` (also mid-render: unfinished steps
        read as their fill value; ``ds.done`` says which tiles are finished)."""
        from storage import open_render
        from supergen_dask.graph import STORE_NAME

        return open_render(self.job.location / STORE_NAME, stage=stage)

    @property
    def stats(self) -> dict[str, Any]:
        """Tiles done per stage, this session's task summary and stage timings, quality."""
        from storage import RenderStore
        from supergen_dask.graph import STORE_NAME

        store = RenderStore.open(self.job.location / STORE_NAME, mode="r")
        out: dict[str, Any] = {"status": self.status, "progress": self.progress()}
        for st in self.plan.stages:
            mask = store.done_mask(st.name)
            out[f"{st.name}_tiles_done"] = (int(mask.sum()), int(mask.size))
        if self._result is not None:
            out.update(self._result.summary())
        sessions = store.attrs.get("sessions", [])
        if sessions and sessions[-1].get("stages"):
            out["stages"] = sessions[-1]["stages"]
        if store.attrs.get("quality"):
            out["quality"] = store.attrs["quality"]
        return out

    def preview(self, step: int, stage: str = "refine"):
        """Decoded pixels ``(F, H, W, 3)`` of a finished step (``supergen_dask.preview``)."""
        from supergen_dask.preview import decode_step

        return decode_step(self.job.location, step, stage)

    def __repr__(self) -> str:
        done, total = self.progress()
        return f"<RenderHandle {self.render_dir.name}: {self.status}, {done}/{total} tasks>"


def submit(specs, client, root: str | Path | Location | None = None) -> list[RenderHandle]:
    """Submit renders (one ``RenderSpec`` or a list) to ``client``'s cluster; returns at once.

    Every spec is validated before anything is submitted; each render goes to
    ``default_render_dir(plan, root)``, so submitting the same spec again resumes it. The same
    spec twice in one call is one render (both handles follow it).
    """
    from supergen_dask.graph import default_render_dir, start_render
    from supergen_dask.plan import plan_render
    from supergen_dask.spec import RenderSpec

    if isinstance(specs, RenderSpec):
        specs = [specs]
    plans = [plan_render(s) for s in specs]
    handles: dict[str, RenderHandle] = {}
    for spec, plan in zip(specs, plans, strict=True):
        if plan.token not in handles:
            handles[plan.token] = RenderHandle(
                start_render(plan, default_render_dir(plan, root), client), spec
            )
    return [handles[p.token] for p in plans]


def wait_all(handles: list[RenderHandle], timeout: float | None = None) -> bool:
    """Wait for every handle; True if all ended within ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for h in handles:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not h.wait(left):
            return False
    return True


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def show_progress(handles: list[RenderHandle], notebook: bool | None = None) -> None:
    """Live progress over all handles: Dask's progress widget in Jupyter (returns at once), a
    bar on stderr in a terminal (returns when every render has ended)."""
    notebook = _in_notebook() if notebook is None else notebook
    if notebook:
        try:
            from distributed import progress

            futures = [f for h in handles for f in h.job.futures]
            progress(futures, notebook=True, multi=True)
            return
        except Exception:  # noqa: BLE001 - no widgets: fall back to the bar
            pass
    from tqdm.auto import tqdm

    total = sum(h.total for h in handles)
    with tqdm(total=total, desc=f"{len(handles)} renders", unit="task", file=sys.stderr) as bar:
        while True:
            done = sum(h.progress()[0] for h in handles)
            bar.update(done - bar.n)
            if all(h.status != "running" for h in handles):
                break
            time.sleep(0.2)
