"""The shape of a render's store, as plain data: what arrays exist, their chunking and their rolls.

The renderer builds a ``RenderLayout`` from its plan; the store is created from it up front (a
template), after which tasks only fill chunks. Everything is in latent cells except the decoded
pixel arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["StageLayout", "DecodeRegion", "DecodeLayout", "RenderLayout"]


@dataclass(frozen=True)
class StageLayout:
    """One denoising stage (``sketch`` or ``refine``) on its canvas.

    ``steps`` are the schedule indices the stage runs; ``offsets[i]`` is the grid offset of step
    ``steps[i]``. The latents written by a step are stored rolled by that step's offset, so each of
    its tiles is exactly one chunk; ``start`` (the stage's input) is stored in the first step's grid,
    and so is ``anchor`` (the clean upscaled sketch) when the stage mixes it in. ``branches`` > 0
    stores each guidance branch's model output per step (``prediction``) when the branches run as
    separate tasks. ``cache`` adds the residual cache's arrays (``supergen_dask.cache``).

    Retention: ``kept`` lists the steps whose latents stay once the render no longer needs them
    (``None``: every step); without ``keep_history`` a step's scheduler history and branch outputs
    go too. A step's chunks are freed (``freed``) only once no unfinished task can read them.

    Image-to-video: ``image_channels`` > 0 stores an image-to-video condition on the canvas
    (``image``, in the first step's grid like ``start``, read at any step's shifted window), and
    ``image_tokens`` x ``image_embed_dim`` its global embeddings (``image_embeds``).
    """

    name: str
    frames: int
    channels: int
    canvas_h: int
    canvas_w: int
    tile_h: int
    tile_w: int
    valid_h: int
    valid_w: int
    steps: tuple[int, ...]
    timesteps: tuple[float, ...]
    offsets: tuple[tuple[int, int], ...]
    state_slots: tuple[tuple[str, int], ...] = ()
    dtype: str = "float32"
    anchor: bool = False
    branches: int = 0
    # residual cache: per step a ``cache`` chunk per tile (the step's input and the input and
    # prediction of the region's last computed step), and ``cache_updates`` rankings of the
    # region-aware thresholds
    cache: bool = False
    cache_updates: int = 0
    kept: tuple[int, ...] | None = None
    keep_history: bool = True
    image_channels: int = 0
    image_tokens: int = 0
    image_embed_dim: int = 0

    def __post_init__(self) -> None:
        if not (len(self.steps) == len(self.timesteps) == len(self.offsets)) or not self.steps:
            raise ValueError("steps, timesteps and offsets must be non-empty and of equal length")
        if self.canvas_h % self.tile_h or self.canvas_w % self.tile_w:
            raise ValueError("the canvas must be a whole number of tiles")

    @property
    def rows(self) -> int:
        return self.canvas_h // self.tile_h

    @property
    def cols(self) -> int:
        return self.canvas_w // self.tile_w

    def step_index(self, step: int) -> int:
        try:
            return self.steps.index(step)
        except ValueError:
            raise KeyError(
                f"stage {self.name!r} has no step {step}; steps: {self.steps[0]}..{self.steps[-1]}"
            ) from None

    def offset_of(self, step: int | None) -> tuple[int, int]:
        """Roll of the stored array: ``None`` is the stage's ``start``."""
        return tuple(self.offsets[0 if step is None else self.step_index(step)])

    def freed(self, step: int) -> tuple[str, ...]:
        """The arrays whose chunks of ``step`` are deleted once nothing reads them (retention)."""
        names: list[str] = []
        if self.kept is not None and step not in self.kept:
            names.append("latents")
        if not self.keep_history:
            names += [f"state_{name}" for name, _ in self.state_slots]
            if self.branches:
                names.append("prediction")
            if self.cache:
                names.append("cache")
        return tuple(names)

    @classmethod
    def from_dict(cls, d: dict) -> StageLayout:
        d = dict(d)
        if d.get("kept") is not None:
            d["kept"] = tuple(d["kept"])
        d["steps"] = tuple(d["steps"])
        d["timesteps"] = tuple(d["timesteps"])
        d["offsets"] = tuple(tuple(o) for o in d["offsets"])
        d["state_slots"] = tuple((str(n), int(s)) for n, s in d.get("state_slots", ()))
        return cls(**d)


@dataclass(frozen=True)
class DecodeRegion:
    """A part of the valid latent canvas decoded by one task: its ``core`` (which it owns) and the
    larger ``window`` it decodes for context. Boxes are ``(y0, x0, h, w)`` in latent cells."""

    row: int
    col: int
    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"region_{self.row}_{self.col}"

    @classmethod
    def from_dict(cls, d: dict) -> DecodeRegion:
        return cls(int(d["row"]), int(d["col"]), tuple(d["core"]), tuple(d["window"]))


@dataclass(frozen=True)
class DecodeLayout:
    """Decoded pixels: one uint8 array ``(frame, py, px, rgb)`` per region, blended on read."""

    frames: int
    scale: int
    valid_h: int
    valid_w: int
    regions: tuple[DecodeRegion, ...]
    frames_per_chunk: int = 16
    # cross-fade width in latent cells, centred on each core boundary (``storage.blend``); None:
    # the whole overlap (stores written before the setting existed)
    blend: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> DecodeLayout:
        d = dict(d)
        d["regions"] = tuple(DecodeRegion.from_dict(r) for r in d["regions"])
        return cls(**d)


@dataclass(frozen=True)
class RenderLayout:
    """Everything a render stores. ``tasks`` names the one-off tasks that get a done marker."""

    stages: tuple[StageLayout, ...]
    decode: DecodeLayout
    embed_tokens: int
    embed_dim: int
    sketch_pixels: tuple[int, int, int] | None = None  # (frames, height, width) in pixels
    tasks: tuple[str, ...] = field(default_factory=tuple)

    def stage(self, name: str) -> StageLayout:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RenderLayout:
        return cls(
            stages=tuple(StageLayout.from_dict(s) for s in d["stages"]),
            decode=DecodeLayout.from_dict(d["decode"]),
            embed_tokens=int(d["embed_tokens"]),
            embed_dim=int(d["embed_dim"]),
            sketch_pixels=tuple(d["sketch_pixels"]) if d.get("sketch_pixels") else None,
            tasks=tuple(d.get("tasks", ())),
        )
