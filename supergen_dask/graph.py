"""The driver: turn a plan into a Dask graph of futures over one render store, run it, resume it.

Graph (one stage after another, no whole-canvas barrier inside a stage):
``prompt`` -> ``sketch_init`` -> sketch steps -> ``upscale`` -> per (step, tile) ``denoise`` tasks,
each depending only on the tiles of the previous step it overlaps -> ``decode`` regions, each
depending on the final tiles under its window -> ``encode``. Work already marked done in the store
is not submitted, so re-running the same spec (or ``resume``) continues where the last run stopped.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, Future, as_completed

from storage import Location, RenderExistsError, RenderStore, as_location, create_render_store, open_render
from supergen_dask import conditioning, config, retention, tasks, worker_models
from supergen_dask.cache import scale_index
from supergen_dask.geometry import TileKey
from supergen_dask.plan import RenderPlan, plan_render
from supergen_dask.spec import RenderSpec
from supergen_dask.timings import stage_timings

__all__ = [
    "RenderError",
    "RenderResult",
    "default_render_dir",
    "prepare_store",
    "run_render",
    "render",
    "resume",
]

log = logging.getLogger(__name__)

STORE_NAME = "render.zarr"
VIDEO_NAME = "video.mp4"
SKETCH_VIDEO_NAME = "sketch.mp4"  # the sketch as a clip, written as soon as stage 1 ends


class RenderError(RuntimeError):
    """A task of the render failed; finished work stays in the store and can be resumed."""


@dataclass
class RenderResult:
    """Where a finished render lives and what it cost. The paths are ``pathlib.Path`` for a local
    render, ``storage.Location`` (path-like: ``name``, ``/``, ``exists``, ``read_bytes``) for one
    on another filesystem (``s3://...``)."""

    render_dir: Path | Location
    store_path: Path | Location
    video_path: Path | Location
    plan: RenderPlan
    session: int
    receipts: list[dict] = field(default_factory=list)

    @property
    def submitted(self) -> int:
        """Tasks that ran in this session (finished work from earlier sessions is not counted)."""
        return sum(1 for r in self.receipts if not r.get("skipped"))

    @property
    def quality(self) -> dict[str, Any] | None:
        """The render's quality metrics (``supergen_dask.quality.render_quality``), if measured."""
        return self.open_store().attrs.get("quality")

    def open_store(self, mode: str = "r") -> RenderStore:
        """The render's store (``storage.RenderStore``)."""
        return RenderStore.open(as_location(self.store_path), mode=mode)

    def dataset(self, stage: str = "refine", crop: bool = True):
        """The render's latents as an ``xarray.Dataset`` (see ``storage.open_render``)."""
        return open_render(as_location(self.store_path), stage=stage, crop=crop)

    def summary(self) -> dict[str, Any]:
        tiles = [r for r in self.receipts if r.get("task") == "denoise" and not r.get("skipped")]
        # steps of a split-guidance stage are finished by the next step's first branch task
        finished_in_branches = sum(1 for r in self.receipts if r.get("finished_step"))
        out: dict[str, Any] = {
            "session": self.session,
            "tasks_run": self.submitted,
            "tile_tasks_run": len(tiles) + finished_in_branches,
        }
        if tiles:
            for k in ("seconds", "read_seconds", "forward_seconds", "write_seconds"):
                out[f"tile_{k}_mean"] = sum(r[k] for r in tiles) / len(tiles)
        return out


def _slug(prompt: str) -> str:
    words = re.findall(r"[a-z0-9]+", prompt.lower())[:6]
    return "-".join(words) or "render"


def default_render_dir(plan: RenderPlan, root: str | Path | Location | None = None) -> Path | Location:
    """``<store-root>/<prompt words>-<spec hash>``: the same spec always maps to the same place.

    ``root`` (default: the ``supergen.store-root`` setting) is a path, an fsspec URL
    (``s3://bucket/renders``) or a ``storage.Location``; the result is a ``Path`` when local."""
    root = config.location(root if root is not None else config.get("store-root"))
    return (root / f"{_slug(plan.spec.prompt)}-{plan.token[:8]}").native()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in (
        "supergen-dask",
        "torch",
        "diffusers",
        "dask",
        "distributed",
        "zarr",
        "xarray",
        "av",
        "numpy",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _cut_short(store_path: Location) -> bool:
    """Whether ``store_path`` is a store whose creation was cut short on object storage (no local
    rename there): this project's arrays without the root group, which ``create_render_store``
    writes last, or with a root that has none of its attributes. Nothing else writes that."""
    if store_path.is_local:
        return False
    try:
        ours = all((store_path / name / "zarr.json").exists() for name in ("task_done", "prompt_embeds"))
        if not ours:
            return False
        top = store_path / "zarr.json"
        return not top.exists() or not json.loads(top.read_bytes()).get("attributes")
    except Exception:  # noqa: BLE001 - unreadable: not ours to delete
        return False


def prepare_store(
    plan: RenderPlan, render_dir: str | Path | Location, overwrite: bool = False
) -> RenderStore:
    """Create the render's store, or reopen it if it holds this very plan (resume).

    A store holding a different render is never touched unless ``overwrite`` is set.
    """
    render_dir = config.location(render_dir)
    store_path = render_dir / STORE_NAME
    if store_path.exists():
        try:
            store = RenderStore.open(store_path)
            existing = store.attrs.get("plan", {}).get("token")
        except (FileNotFoundError, ValueError, KeyError):
            store, existing = None, None
        if existing == plan.token and store is not None:
            from supergen_dask.integrity import repair_store

            repair_store(plan, store, video_exists=(render_dir / VIDEO_NAME).exists())  # redo damaged work
            return store
        if store is None and _cut_short(store_path):
            log.warning("%s: a store whose creation was cut short; making it again", store_path)
        elif not overwrite:
            raise RenderExistsError(
                f"{render_dir} already holds a different render (spec hash {existing}); "
                "choose another output directory or pass overwrite=True (--overwrite)"
            )
        store_path.rmtree()
        video = render_dir / VIDEO_NAME
        if video.exists():
            video.unlink()
    render_dir.mkdir()
    attrs = {"spec": plan.spec.to_dict(), "plan": plan.to_dict(), "versions": _versions(), "sessions": []}
    return create_render_store(store_path, plan.layout(), attrs, compressor=config.get("storage.compressor"))


class _Graph:
    """Submits the tasks that are not yet done and remembers their futures."""

    def __init__(
        self, client: Client, plan: RenderPlan, store: RenderStore, session: int, video_path: Location
    ):
        self.client = client
        self.plan = plan
        self.store = store
        self.session = session
        self.video_path = video_path
        self.run = f"{plan.token[:12]}{session:04x}"
        # the store's location carries its storage options to the workers
        self.args = (plan, store.location, store.instance)
        self.futures: list[Future] = []
        self.tiles: dict[TileKey, Future] = {}
        self.branches: dict[TileKey, list[Future]] = {}
        self.warmed: list[Future] = []
        self.retries = int(config.get("tasks.retries") or 0)
        self.total_steps = plan.spec.num_inference_steps
        self.ranks: dict[int, Future | None] = {}
        self.workers = sorted(client.scheduler_info()["workers"])
        # refinement-step index -> ranking of the cache's region thresholds that follows it
        self._rank_after = {q: j for j, q in enumerate(plan.cache_updates())}

    def _cached(self, st) -> bool:
        return self.plan.cache is not None and st is self.plan.refine

    def _submit(
        self, fn: Callable, *args, key, deps=(), gpu: bool = True, priority: int = 0, home: int | None = None
    ) -> Future:
        # ``home``: a preferred worker (round robin over the workers there were at submission).
        # Dask would otherwise only consider the workers that hold a task's dependencies, so every
        # tile downstream of one task (the upscale, a stage's first step) queued on one worker until
        # work stealing moved them (8 s of one idle worker measured); a preference is loose: Dask
        # still moves the task if that pays
        place = {}
        if home is not None and self.workers:
            place = {"workers": [self.workers[home % len(self.workers)]], "allow_other_workers": True}
        fut = self.client.submit(
            fn,
            *self.args,
            *args,
            *[d for d in deps if d is not None],
            key=key,
            resources={"GPU": 1} if gpu else None,
            retries=self.retries,
            priority=priority,
            pure=False,
            **place,
        )
        self.futures.append(fut)
        return fut

    def named_task(
        self,
        name: str,
        fn: Callable,
        *args,
        deps=(),
        gpu: bool = True,
        priority: int = 0,
        force=False,
        home: int | None = None,
    ):
        if not force and self.store.task_is_done(name):
            return None
        key = (f"{name.split('_')[0]}-{self.run}", name)
        fut = self._submit(fn, *args, key=key, deps=deps, gpu=gpu, priority=priority, home=home)
        return fut

    def stage(self, name: str, entry: Future | dict | None, prompt: Future | None) -> None:
        """Submit a stage's unfinished tile steps. ``entry`` is the stage's start: one future, or
        a future per tile of its first step (``(row, col) -> future``)."""
        st = self.plan.stage(name)
        done = self.store.done_mask(name)
        # resuming, a tile whose neighbours are done may still need a prompt or stage input that is
        # being redone (a damaged chunk, supergen_dask.integrity): wait for those too
        starts = list(entry.values()) if isinstance(entry, dict) else [entry]
        redo = [*starts, prompt] if done.any() else []
        for i, step in enumerate(st.steps):
            for key in st.keys(step):
                if done[i, key.row, key.col]:
                    continue
                if step == st.first:
                    start = entry.get((key.row, key.col)) if isinstance(entry, dict) else entry
                    deps = [start, prompt]
                    if st is self.plan.stages[0]:
                        # a first forward beside the warm-up's on one card made both slow (5 s)
                        deps += self.warmed
                else:
                    deps = [self.tiles.get(d) for d in st.dependencies(key)] + redo
                priority = self.total_steps - step
                index = step - st.first
                # a tile's preferred worker, rotated by one grid per step: a grid whose tiles do
                # not divide evenly over the workers leaves its extra tiles on other workers
                # each step instead of always on the first
                home = index * st.grid.rows * st.grid.cols + key.row * st.grid.cols + key.col
                if st.split_guidance:
                    self._split_step(st, key, deps, priority)
                elif self._cached(st) and not self.plan.cache.forced(index, len(st.steps)):
                    # the residual cache decides on a CPU; only misses take a GPU slot
                    j = scale_index(self.plan.cache, len(st.steps), index)
                    rank = [self.ranks.get(j)] if j is not None else []
                    self.tiles[key] = self._submit(
                        tasks.cache_step,
                        key,
                        self.session,
                        self.run,
                        priority,
                        key=key.task_key(self.run, "cache"),
                        deps=deps + rank,
                        gpu=False,
                        priority=priority,
                        home=home,
                    )
                else:
                    self.tiles[key] = self._submit(
                        tasks.denoise_tile,
                        key,
                        self.session,
                        key=key.task_key(self.run),
                        deps=deps,
                        priority=priority,
                        home=home,
                    )
            if self._cached(st) and i in self._rank_after:
                # rank the tiles' variability once every tile of this step is done
                j = self._rank_after[i]
                self.ranks[j] = self.named_task(
                    f"cache_rank_{j}",
                    tasks.rank_cache_tiles,
                    j,
                    deps=[self.tiles.get(k) for k in st.keys(step)],
                    gpu=False,
                    priority=self.total_steps - step,
                )

    def free(self, name: str) -> None:
        """Submit the tasks that delete what retention does not keep of a stage's steps, each after
        every task that writes or reads those chunks (``supergen_dask.retention``)."""
        st = self.plan.stage(name)
        todo = set(self.plan.free_tasks())
        for step in st.steps:
            task = retention.free_task(name, step)
            if task not in todo:
                continue
            reader = retention.reader_step(st, step, self._cached(st))
            # a split stage's step is marked done by the branch tasks of the step after it
            hi = reader + 1 if st.split_guidance and reader < st.last else reader
            keys = [k for s in range(step, hi + 1) for k in st.keys(s)]
            deps = [self.tiles.get(k) for k in keys] + [b for k in keys for b in self.branches.get(k, ())]
            self.named_task(task, retention.free_step, name, step, deps=deps, gpu=False)

    def _split_step(self, st, key: TileKey, deps: list, priority: int) -> None:
        """A step whose guidance branches are two GPU tasks; each finishes the step before it
        (``tasks.predict_branch``), and a CPU task finishes the stage's last step."""
        if key.step != st.first:  # wait for both branches of the previous step, not its marker
            prev = TileKey(key.stage, key.step - 1, key.row, key.col)
            deps = [*self.branches.get(prev, ()), *deps]
        branches = [
            self._submit(
                tasks.predict_branch,
                key,
                b,
                self.session,
                key=key.task_key(self.run, "predict", b),
                deps=deps,
                priority=priority,
                # each branch prefers its own worker, so the two share a card only when there is
                # one: a worker with two GPU slots would otherwise take both, and they would take
                # turns on its card
                home=b,
            )
            for b in (0, 1)
        ]
        self.branches[key] = branches
        self.tiles[key] = branches[0]  # branch 0 of the next step marks this one done
        if key.step == st.last:
            self.tiles[key] = self._submit(
                tasks.combine_branches,
                key,
                self.session,
                key=key.task_key(self.run, "combine"),
                deps=branches,
                gpu=False,
                priority=priority,
            )

    def seam_pass(self, prompt: Future | None) -> None:
        """Submit the seam pass's unfinished windows, each after the tiles of the last two
        refinement steps under it (``tasks.seam_tile``)."""
        seam, rf = self.plan.seam, self.plan.refine
        done = self.store.done_mask(seam.name)
        g = seam.grid
        for key in seam.keys():
            if done[0, key.row, key.col]:
                continue
            y0, x0 = seam.origin(key)
            reads = rf.covering(rf.last, y0, x0, g.tile_h, g.tile_w)
            if seam.step != rf.first:  # the last step's input and history
                reads += rf.covering(seam.step - 1, y0, x0, g.tile_h, g.tile_w)
            self.tiles[key] = self._submit(
                tasks.seam_tile,
                key,
                self.session,
                key=key.task_key(self.run, "seam"),
                deps=[self.tiles.get(k) for k in reads] + [prompt],
                priority=self.total_steps - seam.step,
            )

    def warm(self) -> None:
        """Load the denoiser on every worker first thing, so no GPU waits for it in stage 2."""
        if all(self.store.done_mask(st.name).all() for st in self.plan.stages):
            return
        for i, address in enumerate(sorted(self.client.scheduler_info()["workers"])):
            fut = self.client.submit(
                tasks.warm_worker,
                *self.args,
                key=(f"warm-{self.run}", i),
                workers=[address],
                allow_other_workers=False,
                priority=self.total_steps + 3,
                pure=False,
            )
            self.futures.append(fut)
            self.warmed.append(fut)

    def build(self) -> None:
        plan = self.plan
        self.warm()
        prompt = self.named_task("prompt", tasks.encode_prompt, priority=self.total_steps + 2)
        # image-to-video: a stage's tiles wait for its image condition, which waits for the prompt
        cond = {st.name: prompt for st in plan.stages}
        if plan.spec.image is not None:
            for st in plan.stages:
                image = self.named_task(
                    f"image_{st.name}",
                    conditioning.encode_image,
                    st.name,
                    deps=[prompt],
                    priority=self.total_steps + 2,
                )
                cond[st.name] = prompt if image is None else image
        rf = plan.refine
        quality = bool(config.get("quality.enabled")) and "quality" not in self.store.attrs
        reference = None  # the quality record's detail reference, measured during the refinement
        if plan.sketch is not None:
            init = self.named_task("sketch_init", tasks.init_stage, "sketch", priority=self.total_steps + 1)
            self.stage("sketch", init, cond["sketch"])
            self.free("sketch")
            last = [self.tiles.get(k) for k in plan.sketch.keys(plan.sketch.last)]
            priority = self.total_steps - rf.first + 1
            pixels = self.named_task("upscale", tasks.upscale_sketch, deps=last, priority=priority)
            if quality:
                reference = self.named_task(
                    "detail_reference", tasks.measure_detail_reference, deps=[pixels], gpu=False, force=True
                )
            sketch_video = self.video_path.with_name(SKETCH_VIDEO_NAME)
            if not sketch_video.exists() and not self.video_path.exists():
                self.named_task(
                    "sketchpreview",
                    tasks.sketch_preview,
                    sketch_video,
                    deps=[pixels],
                    gpu=False,
                    force=True,
                )
            entry = {
                (r, c): self.named_task(
                    f"start_{r}_{c}",
                    tasks.encode_start,
                    r,
                    c,
                    deps=[pixels],
                    priority=priority,
                    home=r * rf.grid.cols + c,
                )
                for r, c in rf.grid.tiles()
            }
        else:
            entry = self.named_task("refine_init", tasks.init_stage, "refine", priority=self.total_steps + 1)
        self.stage("refine", entry, cond["refine"])
        if plan.seam is not None:
            self.seam_pass(cond["refine"])
        self.free("refine")
        decodes = []
        final = plan.final
        for i, reg in enumerate(plan.decode_regions()):
            wy, wx, wh, ww = reg.window
            deps = [self.tiles.get(k) for k in final.covering(final.last, wy, wx, wh, ww)]
            decodes.append(
                self.named_task(f"decode_{reg.row}_{reg.col}", tasks.decode_region, i, deps=deps, home=i)
            )
        if not self.video_path.exists():  # a lost video is re-encoded from the decoded regions
            folder = self.video_path.parent / "segments"
            paths = [folder / f"segment_{i:03d}.mp4" for i in range(len(plan.encode_segments()))]
            segments = [
                self.named_task(
                    f"segment_{i}",
                    tasks.encode_segment,
                    i,
                    path,
                    deps=decodes,
                    gpu=False,
                    force=not path.exists(),
                )
                for i, path in enumerate(paths)
            ]
            self.named_task(
                "encode",
                tasks.encode_output,
                self.video_path,
                paths,
                deps=segments,
                gpu=False,
                force=True,
            )
        if quality:  # beside the mp4 segments and the join: it needs only the decoded regions
            self.named_task(
                "quality", tasks.measure_quality, deps=[*decodes, reference], gpu=False, force=True
            )


def _progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="task", file=sys.stderr, dynamic_ncols=True)


class RenderJob:
    """A render whose tasks are on the cluster. ``wait()`` follows it to the end.

    Several jobs can run at once on one client (a notebook batch): start them all, then wait.
    """

    def __init__(
        self, plan: RenderPlan, render_dir: str | Path | Location, client: Client, overwrite: bool = False
    ):
        self.plan = plan
        # worker settings this process would hand a local cluster: a bad one fails here, before
        # the store is touched, not in the workers' first task
        worker_models.offload_setting()
        worker_models.acceleration_setting()
        self.location = config.location(render_dir)
        self.render_dir = self.location.native()  # a Path when local, as callers always had
        self.client = client
        self.store = prepare_store(plan, self.location, overwrite=overwrite)
        self._sessions = list(self.store.attrs.get("sessions", []))
        self.session = len(self._sessions) + 1
        self._sessions.append(
            {
                "session": self.session,
                "started": _now(),
                "status": "running",
                # by worker address: slots, offload, attention kernel, compile (worker_models)
                "worker_settings": client.run(worker_models.worker_settings),
            }
        )
        self.store.update_attrs(sessions=self._sessions)
        self.video_path = self.location / VIDEO_NAME
        self._t0 = time.perf_counter()
        graph = _Graph(client, plan, self.store, self.session, self.video_path)
        graph.build()
        self.futures: list[Future] = graph.futures

    def progress(self) -> tuple[int, int]:
        """(finished tasks, tasks submitted in this session)."""
        return sum(f.done() for f in self.futures), len(self.futures)

    def wait(self, progress: bool = True, on_task: Callable[[dict], None] | None = None) -> RenderResult:
        """Block until every task is done; raise ``RenderError`` (finished work kept) if one fails."""
        receipts: list[dict] = []
        bar = _progress_bar(len(self.futures), progress, f"render {self.render_dir.name}")
        status = "failed"
        try:
            for fut in as_completed(self.futures):
                if fut.status == "error":
                    exc = fut.exception()
                    raise RenderError(
                        f"task {fut.key} failed: {exc!r}; finished work is kept, resume with "
                        f"`supergen resume {self.render_dir}`"
                    ) from exc
                receipt = fut.result()
                receipts.append(receipt)
                if receipt.get("task") == "quality":  # tasks never write attributes; the driver does
                    self.store.update_attrs(quality=receipt["quality"])
                if on_task is not None:
                    on_task(receipt)
                if bar is not None:
                    bar.set_postfix_str(receipt.get("name", ""), refresh=False)
                    bar.update(1)
            status = "finished"
        finally:
            if bar is not None:
                bar.close()
            if status != "finished":
                self.client.cancel(self.futures)
            workers = {
                str(int(tasks.worker_code(r["worker"]))): r["worker"] for r in receipts if "worker" in r
            }
            gpus = {str(int(tasks.worker_code(r["gpu"]))): r["gpu"] for r in receipts if "gpu" in r}
            if self.plan.cache is not None:
                self._sessions[-1]["cache"] = cache_summary(self.store, self.plan)
            self._sessions[-1].update(
                finished=_now(),
                status=status,
                tasks=len(self.futures),
                seconds=round(time.perf_counter() - self._t0, 3),
                workers=workers,
                gpus=gpus,
                stages=stage_timings(receipts),
            )
            self.store.update_attrs(sessions=self._sessions)
            for fut in self.futures:
                fut.release()
        return RenderResult(
            self.render_dir,
            (self.location / STORE_NAME).native(),
            self.video_path.native(),
            self.plan,
            self.session,
            receipts,
        )


def start_render(
    plan: RenderPlan, render_dir: str | Path | Location, client: Client, *, overwrite: bool = False
) -> RenderJob:
    """Create (or reopen) the store and submit every unfinished task; returns at once."""
    return RenderJob(plan, render_dir, client, overwrite=overwrite)


def run_render(
    plan: RenderPlan,
    render_dir: str | Path | Location,
    client: Client,
    *,
    progress: bool = True,
    overwrite: bool = False,
    on_task: Callable[[dict], None] | None = None,
) -> RenderResult:
    """Run (or resume) ``plan`` in ``render_dir`` on ``client``'s cluster and wait for it."""
    return start_render(plan, render_dir, client, overwrite=overwrite).wait(
        progress=progress, on_task=on_task
    )


def render_batch(
    specs: list[RenderSpec],
    client: Client,
    root: str | Path | Location | None = None,
    *,
    progress: bool = True,
) -> list[RenderResult]:
    """Render several specs at once on one cluster (their tasks interleave), each in its default
    directory under ``root``. Every spec is validated before anything is submitted."""
    plans = [plan_render(s) for s in specs]
    jobs: dict[str, RenderJob] = {}
    for plan in plans:
        if plan.token not in jobs:  # the same spec twice is one render
            jobs[plan.token] = start_render(plan, default_render_dir(plan, root), client)
    done = {token: job.wait(progress=progress) for token, job in jobs.items()}
    return [done[p.token] for p in plans]


def render(
    spec: RenderSpec,
    output_dir: str | Path | Location | None = None,
    client: Client | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
    n_workers: int | None = None,
    processes: bool | None = None,
) -> RenderResult:
    """Plan and run a render. Bad specs raise ``SpecError`` before anything is written.

    ``client`` is an existing Dask client; without one a local cluster is started for the call
    (``supergen.cluster.*`` settings). ``output_dir`` defaults to ``default_render_dir(plan)``; it
    may be a local path, an fsspec URL (``s3://bucket/renders/x``, reached with the
    ``supergen.storage.options`` setting and fsspec's own configuration) or a ``storage.Location``
    (a URL with its storage options).
    """
    from supergen_dask.cluster import client_for

    plan = plan_render(spec)
    render_dir = output_dir if output_dir is not None else default_render_dir(plan)
    with client_for(client, n_workers=n_workers, processes=processes) as c:
        return run_render(plan, render_dir, c, progress=progress, overwrite=overwrite)


def load_plan(render_dir: str | Path | Location) -> RenderPlan:
    """The plan stored with a render."""
    store = RenderStore.open(config.location(render_dir) / STORE_NAME, mode="r")
    return RenderPlan.from_dict(store.attrs["plan"])


def resume(
    render_dir: str | Path | Location,
    client: Client | None = None,
    *,
    progress: bool = True,
    n_workers: int | None = None,
    processes: bool | None = None,
) -> RenderResult:
    """Continue a render from its done markers (its plan is read from the store)."""
    from supergen_dask.cluster import client_for

    plan = load_plan(render_dir)
    with client_for(client, n_workers=n_workers, processes=processes) as c:
        return run_render(plan, render_dir, c, progress=progress)


def describe(render_dir: str | Path | Location) -> dict[str, Any]:
    """Plan summary and progress of a render directory (for ``supergen info``)."""
    render_dir = config.location(render_dir)
    store = RenderStore.open(render_dir / STORE_NAME, mode="r")
    plan = RenderPlan.from_dict(store.attrs["plan"])
    progress = {}
    for st in plan.stages:
        mask = store.done_mask(st.name)
        progress[st.name] = f"{int(mask.sum())}/{mask.size} tiles"
    progress.update({k: v for k, v in store.tasks_done().items()})
    out_cache = cache_summary(store, plan)
    return {
        "cache": out_cache,
        "render_dir": str(render_dir),
        "plan": plan.summary(),
        "progress": progress,
        "sessions": store.attrs.get("sessions", []),
        "quality": store.attrs.get("quality"),
        "video": str(render_dir / VIDEO_NAME) if (render_dir / VIDEO_NAME).exists() else None,
    }


def cache_summary(store: RenderStore, plan: RenderPlan) -> dict[str, Any] | None:
    """What the residual cache did so far: refinement tile steps finished, model calls, skips,
    and the stage-2 speed-up the skips imply (tile steps per model call; hits cost ~nothing)."""
    if plan.cache is None:
        return None
    done = store.done_mask("refine")
    computed = store.tile_stats("refine")["computed"][done]
    calls, n = int((computed == 1).sum()), int(done.sum())
    return {
        "threshold": plan.cache.threshold,
        "tile_steps": n,
        "model_calls": calls,
        "skipped": n - calls,
        "skip_rate": round((n - calls) / n, 4) if n else None,
        "estimated_stage2_speedup": round(n / calls, 3) if calls else None,
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
