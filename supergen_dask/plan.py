"""From a validated spec to a ``RenderPlan``: canvas, tile grids, shifts, timesteps, layout.

The plan is pure data (JSON round-trip, no weights, no cluster): everything a task needs to know
about where it is, and everything the store needs to be created up front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipelines import ModelInfo
from pipelines.schedulers import resolve_scheduler
from storage import DecodeLayout, DecodeRegion, RenderLayout, StageLayout, segment_ranges
from supergen_dask import config
from supergen_dask.cache import CachePolicy, update_points
from supergen_dask.geometry import ShiftSchedule, TileGrid, TileKey, round_up
from supergen_dask.seam import SeamPlan, seam_plan
from supergen_dask.spec import RenderSpec, SpecError
from supergen_dask.stepping import SchedulerRef, check_tileable, state_slots

__all__ = ["StagePlan", "RenderPlan", "plan_render", "stage_layout", "sketch_latent_size", "decode_regions"]


def stage_layout(stage: StagePlan | SeamPlan, dtype: str, **arrays: Any) -> StageLayout:
    """The storage layout of a stage: its canvas, tiles, steps, timesteps and grid offsets from
    ``stage`` (a ``StagePlan`` or the ``SeamPlan``), and ``arrays`` (state slots, retention, cache,
    image condition: ``StageLayout``'s other fields) as given."""
    g = stage.grid
    return StageLayout(
        name=stage.name,
        frames=stage.latent_frames,
        channels=stage.channels,
        canvas_h=g.canvas_h,
        canvas_w=g.canvas_w,
        tile_h=g.tile_h,
        tile_w=g.tile_w,
        valid_h=g.valid_h,
        valid_w=g.valid_w,
        steps=tuple(stage.steps),
        timesteps=tuple(stage.timesteps),
        offsets=tuple(stage.offsets),
        dtype=dtype,
        **arrays,
    )


@dataclass(frozen=True)
class StagePlan:
    """One denoising stage: its canvas grid, shift schedule and the schedule steps it runs."""

    name: str
    grid: TileGrid
    shift: ShiftSchedule
    steps: tuple[int, ...]
    timesteps: tuple[float, ...]
    latent_frames: int
    channels: int
    # classifier-free guidance as two tasks per step (one per branch, on different GPUs); the
    # sketch does this, since it is one tile and would use one GPU. Needs an unshifted grid.
    split_guidance: bool = False

    def __post_init__(self) -> None:
        if self.split_guidance and self.shift.stride_y + self.shift.stride_x:
            raise ValueError("split guidance needs an unshifted grid (a step's tile is its own window)")

    @property
    def first(self) -> int:
        return self.steps[0]

    @property
    def last(self) -> int:
        return self.steps[-1]

    def offset(self, step: int) -> tuple[int, int]:
        """Grid offset of schedule step ``step`` (0 on the stage's first step)."""
        return self.shift.offset(step - self.first)

    @property
    def offsets(self) -> tuple[tuple[int, int], ...]:
        """Grid offset of each of ``steps``."""
        return tuple(self.offset(s) for s in self.steps)

    def keys(self, step: int) -> list[TileKey]:
        return [TileKey(self.name, step, r, c) for r, c in self.grid.tiles()]

    def all_keys(self) -> list[TileKey]:
        return [k for s in self.steps for k in self.keys(s)]

    def origin(self, key: TileKey) -> tuple[int, int]:
        return self.grid.origin(key.row, key.col, self.offset(key.step))

    def dependencies(self, key: TileKey) -> list[TileKey]:
        """The tiles of the previous step this tile's window overlaps (none on the first step)."""
        if key.step == self.first:
            return []
        y0, x0 = self.origin(key)
        prev = key.step - 1
        cells = self.grid.covering(y0, x0, self.grid.tile_h, self.grid.tile_w, self.offset(prev))
        return [TileKey(self.name, prev, r, c) for r, c in cells]

    def covering(self, step: int, y0: int, x0: int, h: int, w: int) -> list[TileKey]:
        """The tiles of ``step`` that a canvas window overlaps."""
        cells = self.grid.covering(y0, x0, h, w, self.offset(step))
        return [TileKey(self.name, step, r, c) for r, c in cells]

    def layout(
        self,
        slots: dict[str, int],
        dtype: str,
        anchor: bool = False,
        keep_every: int = 1,
        keep_history: bool = True,
        cache: CachePolicy | None = None,
        image: tuple[int, int, int] = (0, 0, 0),
    ) -> StageLayout:
        """The stage's arrays; ``image`` is the image condition's (channels, tokens, embed dim)."""
        from supergen_dask.retention import kept_steps

        return stage_layout(
            self,
            dtype,
            state_slots=tuple(sorted(slots.items())),
            anchor=anchor,
            branches=2 if self.split_guidance else 0,
            cache=cache is not None,
            cache_updates=0 if cache is None else len(update_points(cache, len(self.steps))),
            kept=None if keep_every == 1 else kept_steps(self.steps, keep_every),
            keep_history=keep_history,
            image_channels=image[0],
            image_tokens=image[1],
            image_embed_dim=image[2],
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "grid": self.grid.to_dict(),
            "shift": self.shift.to_dict(),
            "steps": list(self.steps),
            "timesteps": list(self.timesteps),
            "latent_frames": self.latent_frames,
            "channels": self.channels,
            "split_guidance": self.split_guidance,
        }

    @classmethod
    def from_dict(cls, d: dict) -> StagePlan:
        return cls(
            name=d["name"],
            grid=TileGrid(**d["grid"]),
            shift=ShiftSchedule(**d["shift"]),
            steps=tuple(d["steps"]),
            timesteps=tuple(d["timesteps"]),
            latent_frames=d["latent_frames"],
            channels=d["channels"],
            split_guidance=bool(d.get("split_guidance", False)),
        )


@dataclass(frozen=True)
class RenderPlan:
    """Everything about a render that does not depend on where it runs."""

    spec: RenderSpec
    model: ModelInfo
    scheduler: SchedulerRef
    token: str
    sketch: StagePlan | None
    refine: StagePlan
    decode_margin: int
    upscale_margin: int = 8
    # decode regions' cross-fade width in latent cells (None: the whole overlap, older plans)
    decode_blend: int | None = None
    # settings that decide the output's bytes or record live in the plan, never read by a task
    # from the worker's configuration (a remote worker's differs from the driver's)
    encode_threads: int = 2
    encode_segment_frames: int = 16
    quality_frames: int = 33
    # the residual cache of the refinement stage (``supergen_dask.cache``), None when off
    cache: CachePolicy | None = None
    # sha256 of the conditioning image's file (image-to-video), checked when the image is encoded
    image_sha256: str = ""
    # the last refinement step again on a half-tile-shifted grid, blended in (supergen_dask.seam)
    seam: SeamPlan | None = None

    # -- derived ----------------------------------------------------------------------------------
    @property
    def latent_frames(self) -> int:
        return self.refine.latent_frames

    @property
    def pixel_frames(self) -> int:
        return self.model.pixel_frames(self.latent_frames)

    @property
    def cfg(self) -> bool:
        """Classifier-free guidance runs (diffusers' rule: guidance_scale > 1)."""
        return self.spec.guidance_scale > 1.0

    def guidance(self, step: int) -> float:
        """The guidance scale of schedule step ``step``: ``guidance_scale_2`` below a two-expert
        model's boundary timestep, ``guidance_scale`` otherwise (diffusers' rule)."""
        s = self.spec
        if not self.model.guidance_boundary or s.guidance_scale_2 is None:
            return s.guidance_scale
        st = next(st for st in self.stages if step in st.steps)
        t = st.timesteps[st.steps.index(step)]
        return s.guidance_scale if t >= self.model.guidance_boundary else s.guidance_scale_2

    @property
    def anchored(self) -> bool:
        """Refinement mixes in the re-noised upscaled sketch (``spec.anchor``)."""
        return self.sketch is not None and self.spec.anchor.enabled

    def anchor_weight(self, step: int) -> float:
        """Sketch-anchoring weight before refine step ``step`` (0 when anchoring is off)."""
        if not self.anchored:
            return 0.0
        return self.spec.anchor.weight(step - self.refine.first, len(self.refine.steps))

    @property
    def stages(self) -> tuple[StagePlan, ...]:
        return tuple(s for s in (self.sketch, self.refine) if s is not None)

    def stage(self, name: str) -> StagePlan:
        for s in self.stages:
            if s.name == name:
                return s
        if self.seam is not None and name == self.seam.name:
            return self.seam
        raise KeyError(f"no stage {name!r} in this plan")

    @property
    def final(self) -> StagePlan | SeamPlan:
        """Where the final latents are: the seam pass when there is one, else the refinement
        (``.name``, ``.last`` and ``.covering`` of either)."""
        return self.seam if self.seam is not None else self.refine

    @property
    def state_slots(self) -> dict[str, int]:
        return state_slots(self.scheduler)

    @property
    def sketch_pixel_size(self) -> tuple[int, int] | None:
        if self.sketch is None:
            return None
        f = self.model.spatial_factor
        return self.sketch.grid.canvas_h * f, self.sketch.grid.canvas_w * f

    @property
    def tasks(self) -> tuple[str, ...]:
        """One-off tasks with a done marker, in graph order."""
        names = ["prompt"]
        if self.spec.image is not None:
            names += [f"image_{s.name}" for s in self.stages]
        names.append("sketch_init" if self.sketch is not None else "refine_init")
        if self.sketch is not None:
            names.append("upscale")
            names += [f"start_{r}_{c}" for r, c in self.refine.grid.tiles()]
        names += [f"cache_rank_{j}" for j in range(len(self.cache_updates()))]
        names += [f"decode_{r.row}_{r.col}" for r in self.decode_regions()]
        names += [f"segment_{i}" for i in range(len(self.encode_segments()))]
        names.append("encode")
        names += self.free_tasks()
        return tuple(names)

    def cache_updates(self) -> tuple[int, ...]:
        """Refinement-step indices after which the cache's region thresholds are re-ranked."""
        return () if self.cache is None else update_points(self.cache, len(self.refine.steps))

    def stage_layouts(self) -> tuple[StageLayout, ...]:
        """Each stage's storage layout (dtype, state slots, retention, cache, image condition)."""
        out = self.spec.output
        m = self.model
        image = (m.image_channels, m.image_tokens, m.image_embed_dim) if self.spec.image else (0, 0, 0)
        return tuple(
            s.layout(
                self.state_slots,
                out.store_dtype,
                image=image,
                anchor=self.anchored and s.name == "refine",
                keep_every=1 if out.keep_every is None else out.keep_every,
                keep_history=True if out.keep_history is None else out.keep_history,
                cache=self.cache if s.name == "refine" else None,
            )
            for s in self.stages
        )

    def free_tasks(self) -> list[str]:
        """One task per step whose chunks retention frees (``supergen_dask.retention``)."""
        from supergen_dask.retention import free_task

        # the seam pass re-runs the last refinement step from the step before it: that one stays
        spared = (
            {("refine", self.refine.steps[-2])}
            if self.seam is not None and len(self.refine.steps) > 1
            else set()
        )
        return [
            free_task(lay.name, step)
            for lay in self.stage_layouts()
            for step in lay.steps
            if lay.freed(step) and (lay.name, step) not in spared
        ]

    def encode_segments(self) -> list[tuple[int, int]]:
        """Pixel-frame ranges ``[start, stop)`` encoded as separate segments, of balanced length."""
        n = math.ceil(self.pixel_frames / self.encode_segment_frames)
        return segment_ranges(self.pixel_frames, math.ceil(self.pixel_frames / n))

    def decode_regions(self) -> tuple[DecodeRegion, ...]:
        g = self.refine.grid
        return decode_regions(g.valid_h, g.valid_w, g.tile_h, g.tile_w, self.decode_margin)

    def n_tile_tasks(self) -> int:
        seam = 0 if self.seam is None else self.seam.grid.n_tiles
        return sum(len(s.steps) * s.grid.n_tiles for s in self.stages) + seam

    def estimate(self):
        """What this plan costs: tile tasks, store bytes, peak worker memory
        (``supergen_dask.estimate.RenderEstimate``)."""
        from supergen_dask.estimate import estimate_plan

        return estimate_plan(self)

    def layout(self) -> RenderLayout:
        g = self.refine.grid
        sp = self.sketch_pixel_size
        return RenderLayout(
            stages=self.stage_layouts()
            + (() if self.seam is None else (stage_layout(self.seam, self.spec.output.store_dtype),)),
            decode=DecodeLayout(
                frames=self.pixel_frames,
                scale=self.model.spatial_factor,
                valid_h=g.valid_h,
                valid_w=g.valid_w,
                regions=self.decode_regions(),
                blend=self.decode_blend,
            ),
            embed_tokens=self.model.text_tokens,
            embed_dim=self.model.text_embed_dim,
            sketch_pixels=None if sp is None else (self.pixel_frames, sp[0], sp[1]),
            tasks=self.tasks,
        )

    def summary(self) -> str:
        g = self.refine.grid
        f = self.model.spatial_factor
        s = self.spec
        lines = [
            f"model {self.model.name}: native {self.model.native_width}x{self.model.native_height}, "
            f"{self.scheduler.class_name}",
            f"output {s.width}x{s.height}, {s.num_frames} frames ({self.latent_frames} latent) at {s.fps} fps",
        ]
        if self.sketch is not None:
            sh, sw = self.sketch_pixel_size
            lines.append(f"sketch {sw}x{sh}, {len(self.sketch.steps)} steps")
        lines.append(
            f"refine {len(self.refine.steps)} of {s.num_inference_steps} steps on a {g.rows}x{g.cols} grid of "
            f"{g.tile_w * f}x{g.tile_h * f} px tiles (canvas {g.canvas_w * f}x{g.canvas_h * f}, "
            f"shift {self.refine.shift.stride_x}x{self.refine.shift.stride_y} latent px every {self.refine.shift.every}, "
            f"{self.refine.shift.order} order; "
            f"{s.tile_policy} tiles, {g.padding_waste:+.1%} compute on padding)"
        )
        if self.cache is not None:
            c = self.cache
            lines.append(
                f"cache on: tau {c.threshold:g}, first {c.warmup} and last refine steps always run, "
                f"region thresholds x(1+{c.alpha:g}) for the most {c.direction} tiles every {c.interval} steps"
            )
        est = self.estimate()
        lines.append(est.summary())
        if est.gpu is not None:
            lines.append(est.gpu.summary())
        return "\n".join(lines)

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "model": self.model.to_dict(),
            "scheduler": self.scheduler.to_dict(),
            "token": self.token,
            "sketch": None if self.sketch is None else self.sketch.to_dict(),
            "refine": self.refine.to_dict(),
            "decode_margin": self.decode_margin,
            "decode_blend": self.decode_blend,
            "upscale_margin": self.upscale_margin,
            "encode_threads": self.encode_threads,
            "encode_segment_frames": self.encode_segment_frames,
            "quality_frames": self.quality_frames,
            "cache": None if self.cache is None else self.cache.to_dict(),
            "image_sha256": self.image_sha256,
            "seam": None if self.seam is None else self.seam.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RenderPlan:
        sched = d["scheduler"]
        return cls(
            spec=RenderSpec.from_dict(d["spec"]),
            model=ModelInfo(**d["model"]),
            scheduler=SchedulerRef.create(sched["class_name"], sched["config"], sched["num_inference_steps"]),
            token=d["token"],
            sketch=None if d["sketch"] is None else StagePlan.from_dict(d["sketch"]),
            refine=StagePlan.from_dict(d["refine"]),
            decode_margin=d["decode_margin"],
            decode_blend=d.get("decode_blend"),
            upscale_margin=d.get("upscale_margin", 8),
            encode_threads=d.get("encode_threads", 2),
            encode_segment_frames=d.get("encode_segment_frames", 10**6),
            quality_frames=d.get("quality_frames", 33),
            cache=CachePolicy.from_dict(d["cache"]) if d.get("cache") else None,
            image_sha256=d.get("image_sha256", ""),
            seam=SeamPlan.from_dict(d["seam"]) if d.get("seam") else None,
        )


def sketch_latent_size(valid_h: int, valid_w: int, info: ModelInfo) -> tuple[int, int]:
    """Sketch size: the output's aspect ratio at the model's native area (never larger than the
    output), in whole transformer patches."""
    nh, nw = info.native_latent_hw
    p = info.patch_spatial
    scale = min(1.0, math.sqrt((nh * nw) / (valid_h * valid_w)))
    return max(p, round(valid_h * scale / p) * p), max(p, round(valid_w * scale / p) * p)


def decode_regions(
    valid_h: int, valid_w: int, core_h: int, core_w: int, margin: int
) -> tuple[DecodeRegion, ...]:
    """Cut the valid latent area into cores of ``core_h x core_w`` with ``margin`` cells of context."""
    regions = []
    for r, y in enumerate(range(0, valid_h, core_h)):
        for c, x in enumerate(range(0, valid_w, core_w)):
            ch, cw = min(core_h, valid_h - y), min(core_w, valid_w - x)
            wy, wx = max(0, y - margin), max(0, x - margin)
            wh, ww = min(valid_h, y + ch + margin) - wy, min(valid_w, x + cw + margin) - wx
            regions.append(DecodeRegion(r, c, (y, x, ch, cw), (wy, wx, wh, ww)))
    return tuple(regions)


def plan_render(spec: RenderSpec) -> RenderPlan:
    """Validate ``spec`` and derive the full plan. Raises ``SpecError`` naming the bad field, or
    ``LimitError`` if the plan's estimate is over a ``supergen.limits`` setting."""
    spec = spec.resolved()
    info = spec.model_info()
    f, p = info.spatial_factor, info.patch_spatial
    T, k = spec.num_inference_steps, spec.refine_steps
    cls, cfg = resolve_scheduler(info.scheduler_class, info.scheduler_config, spec.scheduler)
    ref = SchedulerRef.create(cls, cfg, T)
    try:
        check_tileable(ref)
    except ValueError as exc:
        raise SpecError("scheduler", str(exc)) from None
    timesteps = ref.timesteps()
    if len(timesteps) != T:
        raise SpecError(
            "num_inference_steps", f"scheduler {cls} produced {len(timesteps)} timesteps for {T} steps"
        )
    frames = info.latent_frames(spec.num_frames)
    C = info.latent_channels
    vh, vw = spec.height // f, spec.width // f
    nh, nw = info.native_latent_hw

    grid = TileGrid.for_canvas(vh, vw, nh, nw, multiple=p, policy=spec.tile_policy)
    if spec.shift.enabled:
        shift = ShiftSchedule.for_grid(grid, spec.shift.divisions, spec.shift.every, order=spec.shift.order)
    else:
        shift = ShiftSchedule.none(grid)
    refine_steps = tuple(range(T - k, T))
    refine = StagePlan(
        "refine", grid, shift, refine_steps, tuple(timesteps[i] for i in refine_steps), frames, C
    )

    sketch = None
    if k < T:
        if spec.sketch_height is not None or spec.sketch_width is not None:
            sh0, sw0 = sketch_latent_size(vh, vw, info)
            sh = spec.sketch_height // f if spec.sketch_height is not None else sh0
            sw = spec.sketch_width // f if spec.sketch_width is not None else sw0
        else:
            sh, sw = sketch_latent_size(vh, vw, info)
        sh, sw = round_up(sh, p), round_up(sw, p)
        sgrid = TileGrid.single(sh, sw)
        sketch = StagePlan(
            "sketch",
            sgrid,
            ShiftSchedule.none(sgrid),
            tuple(range(T)),
            tuple(timesteps),
            frames,
            C,
            split_guidance=spec.guidance_scale > 1.0 and bool(config.get("sketch.split-guidance")),
        )

    plan = RenderPlan(
        spec=spec,
        model=info,
        scheduler=ref,
        token=spec.token(info.revision),
        sketch=sketch,
        refine=refine,
        decode_margin=int(config.get("decode.margin")),
        decode_blend=decode_blend(),
        upscale_margin=int(config.get("upscale.margin")),
        encode_threads=int(config.get("encode.threads")),
        encode_segment_frames=segment_frames(spec.height, spec.width),
        quality_frames=quality_frames(spec.height, spec.width),
        cache=spec.cache.policy(k, info.cache_threshold) if spec.cache.enabled else None,
        image_sha256=image_digest(spec.image),
        seam=_seam_plan(refine, p),
    )
    from supergen_dask.estimate import check_limits

    check_limits(plan)
    return plan


def image_digest(path: str | None) -> str:
    """sha256 of an image-to-video render's image file ('' without one)."""
    from supergen_dask.conditioning import file_digest

    return "" if path is None else file_digest(path)


def _seam_plan(refine: StagePlan, patch: int) -> SeamPlan | None:
    """``supergen_dask.seam.seam_plan`` with the ``seam.*`` settings, for a transformer with
    spatial patches of ``patch`` latent cells."""
    return seam_plan(refine, bool(config.get("seam.enabled")), float(config.get("seam.max-extra")), patch)


def decode_blend() -> int | None:
    """``decode.blend`` checked: a whole number of latent cells >= 1, or null (whole overlap)."""
    value = config.get("decode.blend")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError("decode.blend", f"must be a whole number of latent cells >= 1 or null, got {value!r}")
    return value


AUTO_SEGMENT_PIXELS = 8 * 3840 * 2160
"""Pixels an ``auto``-sized mp4 segment holds at most (8 frames of 4K), between 8 and 16 frames."""


def segment_frames(height: int, width: int) -> int:
    """Frames per mp4 segment (``encode.segment-frames``): a whole number >= 1, or ``auto``: 16
    frames, fewer for large frames so that a segment holds at most ``AUTO_SEGMENT_PIXELS`` pixels
    (8 frames of 4K), never fewer than 8.

    Segments are encoded at once, so the longest one is the encode's critical path: at 4K a frame
    takes most of a second per 2-thread segment, so 8-frame segments end in about half the time of 16.
    Each segment starts with a keyframe, which is why ``auto`` stops at 8. Joined, 81 grainy 4K
    frames at crf 18 were 3.2% larger than one stream from 14-frame segments and 7.3% from 8;
    48 grainy 1080p frames 2.1% from 16, 5.4% from 8, 11.8% from 4. Flat, grain-free frames pay
    more (1.6x at 16, 2.5x at 8, of far fewer bytes). Only the frame size decides it, never the
    machine, so a render's bytes do not depend on where it was planned.
    """
    value = config.get("encode.segment-frames")
    if value == "auto":
        return max(8, min(16, AUTO_SEGMENT_PIXELS // (height * width)))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(
            "encode.segment-frames", f"must be a whole number of frames >= 1 or auto, got {value!r}"
        )
    return value


def quality_frames(height: int, width: int) -> int:
    """Frames the quality record measures: ``quality.max-frames``, fewer for large videos so it
    reads at most ``quality.max-pixels`` pixels (never fewer than 3: flicker needs neighbours)."""
    limit = int(config.get("quality.max-frames"))
    budget = float(config.get("quality.max-pixels") or 0)
    if budget > 0:
        limit = min(limit, max(3, int(budget // (height * width))))
    return limit
