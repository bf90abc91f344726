"""What a user asks for: ``RenderSpec`` and its settings, validated before any work starts.

A spec names no path and no cluster (those are injected when it runs). Fields left ``None`` take
the model's defaults when the spec is *resolved* against the model; the resolved spec is what a
render stores and what identifies it, so re-running the same request resumes the same render.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipelines import ModelInfo, UnknownModelError, available_models, model_info
from pipelines.schedulers import SCHEDULER_ALIASES
from supergen_dask.geometry import DEFAULT_SHIFT_ORDER, SHIFT_ORDERS, TILE_POLICIES

__all__ = [
    "SpecError",
    "SpecFileError",
    "load_spec_file",
    "ShiftSettings",
    "CacheSettings",
    "AnchorSettings",
    "OutputSettings",
    "RenderSpec",
]

DTYPES = ("float32", "bfloat16", "float16")
STORE_DTYPES = ("float32", "float16")
CODECS = ("h264", "lossless")


class SpecError(ValueError):
    """An invalid render spec. ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class SpecFileError(ValueError):
    """A spec file that cannot be read or parsed; the message starts with its path."""


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """The mapping of fields in a JSON or YAML (``.yaml``/``.yml``) spec file.

    YAML is read with ``safe_load``, so tags that would build Python objects are refused.

    Raises
    ------
    SpecFileError
        If the file cannot be read, does not parse, or does not hold a mapping; the message names
        the file (and the line, for parse errors).
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except IsADirectoryError:
        raise SpecFileError(f"{name}: is a directory, not a spec file") from None
    except FileNotFoundError:
        raise SpecFileError(f"{name}: no such spec file") from None
    except UnicodeDecodeError:
        raise SpecFileError(f"{name}: not a UTF-8 text file") from None
    except OSError as exc:
        raise SpecFileError(f"{name}: cannot read the spec file ({exc.strerror or exc})") from None
    if name.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            where = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark is not None else ""
            problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
            if isinstance(exc, yaml.constructor.ConstructorError):
                problem = f"YAML tags are not allowed ({problem})"
            raise SpecFileError(f"{name}: {where}{problem}") from None
        except yaml.YAMLError as exc:
            raise SpecFileError(f"{name}: invalid YAML ({' '.join(str(exc).split())})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecFileError(
                f"{name}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
    if not isinstance(data, dict):
        raise SpecFileError(f"{name}: a spec file must hold a mapping of fields, got {type(data).__name__}")
    return data


def _check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, f"must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise SpecError(name, f"must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise SpecError(name, f"must be <= {hi}, got {value}")
    return value


def _check_number(name: str, value: Any, lo: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(name, f"must be a finite number, got {value!r}")
    if lo is not None and value < lo:
        raise SpecError(name, f"must be >= {lo}, got {value}")
    return float(value)


def _check_choice(name: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise SpecError(name, f"must be one of {list(allowed)}, got {value!r}")
    return value


def _from_mapping(cls, data: Any, prefix: str = ""):
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise SpecError(prefix.rstrip(".") or cls.__name__, f"expected a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise SpecError(f"{prefix}{unknown[0]}", f"unknown field; allowed: {sorted(names)}")
    return cls(**data)


@dataclass(frozen=True)
class ShiftSettings:
    """Tile shifting: the grid moves by multiples of ``tile // divisions`` per axis every ``every``
    steps, visiting them in ``order`` (``supergen_dask.geometry.ShiftSchedule``): ``walk`` (the
    default) is the published schedule, one stride per step; ``spread`` jumps about half a tile
    from one step to the next, so the last steps' borders do not pile up in one band: fewer seams
    at the last grid with the residual cache on, but more flicker (``reports/seam-pass.md``)."""

    enabled: bool = True
    divisions: int = 16
    every: int = 1
    order: str = DEFAULT_SHIFT_ORDER

    def validate(self) -> None:
        if not isinstance(self.enabled, bool):
            raise SpecError("shift.enabled", f"must be true or false, got {self.enabled!r}")
        _check_int("shift.divisions", self.divisions, 1)
        _check_int("shift.every", self.every, 1)
        if self.order not in SHIFT_ORDERS:
            raise SpecError("shift.order", f"must be one of {', '.join(SHIFT_ORDERS)}, got {self.order!r}")


@dataclass(frozen=True)
class CacheSettings:
    """Region-aware residual cache (SuperGen's accumulate-and-threshold rule, ``supergen_dask.cache``).

    ``enabled`` ``None`` takes the model's default: on only where a threshold sweep on that model
    showed the fidelity holds (the shipped toy; ``supergen models`` lists each), off elsewhere.
    ``threshold`` is tau (``None``: the model's default; thresholds do not transfer between
    families); the first ``warmup_steps`` refinement steps (``None``: a tenth of
    them, at least 2) and the last step always run the model; after every ``region_interval``
    steps the most (``region_direction: variable``) or least (``static``) variable tiles get their
    threshold raised by ``region_alpha`` (the runner-up by half of it); ``max_skips`` caps a run
    of consecutive skips (``None``: no cap).
    """

    enabled: bool | None = None
    threshold: float | None = None
    warmup_steps: int | None = None
    region_alpha: float = 0.5
    region_interval: int = 5
    region_direction: str = "variable"
    max_skips: int | None = None

    def validate(self) -> None:
        if self.enabled is not None and not isinstance(self.enabled, bool):
            raise SpecError("cache.enabled", f"must be true, false or null, got {self.enabled!r}")
        if self.threshold is not None and _check_number("cache.threshold", self.threshold, 0.0) <= 0:
            raise SpecError("cache.threshold", "must be > 0")
        if self.warmup_steps is not None:
            _check_int("cache.warmup_steps", self.warmup_steps, 2)
        _check_number("cache.region_alpha", self.region_alpha, 0.0)
        _check_int("cache.region_interval", self.region_interval, 2)
        _check_choice("cache.region_direction", self.region_direction, ("variable", "static"))
        if self.max_skips is not None:
            _check_int("cache.max_skips", self.max_skips, 1)

    def policy(self, refine_steps: int, family_threshold: float):
        """The resolved ``supergen_dask.cache.CachePolicy`` for a stage of ``refine_steps`` steps."""
        from supergen_dask.cache import CachePolicy

        warmup = self.warmup_steps if self.warmup_steps is not None else max(2, math.ceil(refine_steps / 10))
        return CachePolicy(
            threshold=float(self.threshold if self.threshold is not None else family_threshold),
            warmup=int(warmup),
            alpha=float(self.region_alpha),
            interval=int(self.region_interval),
            direction=self.region_direction,
            max_skips=self.max_skips,
        )


@dataclass(frozen=True)
class AnchorSettings:
    """Sketch anchoring (DemoFusion's skip residual), off by default.

    Before refinement step ``i`` of ``k``, each tile's latents are mixed with the upscaled sketch
    re-noised to that step: ``x <- (1 - c) x + c * anchor``, with
    ``c = strength * ((1 + cos(pi * i / k)) / 2) ** decay``, so the pull toward the sketch's layout
    is strongest early and fades out. Meant against objects that tiles invent twice.
    """

    strength: float = 0.0
    decay: float = 3.0

    def validate(self) -> None:
        strength = _check_number("anchor.strength", self.strength, 0.0)
        if strength > 1:
            raise SpecError("anchor.strength", f"must be in [0, 1], got {strength}")
        if _check_number("anchor.decay", self.decay, 0.0) <= 0:
            raise SpecError("anchor.decay", "must be > 0")

    @property
    def enabled(self) -> bool:
        return self.strength > 0

    def weight(self, index: int, steps: int) -> float:
        """Mixing weight before refinement step ``index`` (0-based) of ``steps``. Zero on the first
        step, whose input already is the re-noised sketch."""
        if index <= 0:
            return 0.0
        return float(self.strength * ((1 + math.cos(math.pi * index / steps)) / 2) ** self.decay)


@dataclass(frozen=True)
class OutputSettings:
    """Video encoding: ``h264`` (yuv420p, ``crf``) or ``lossless`` (RGB H.264, crf 0).

    ``store_dtype`` is the type latents and scheduler history are stored in (and so the type each
    step reads back): ``float16`` halves the store at a small relative error of the final latents
    (bounded in tests/test_retention.py); ``float32`` stores exactly what was computed.

    Retention (left ``None``: ``supergen.storage.keep-every`` / ``keep-history``): the final
    latents are always kept, and the latents of every ``keep_every``-th schedule step (those with
    ``(step + 1) % keep_every == 0``; 0 keeps only the final ones, 1 every step); the scheduler
    history of a step is kept only with ``keep_history``. Everything else is deleted as soon as no
    unfinished task can read it, so resuming stays exact.
    """

    codec: str = "h264"
    crf: int = 18
    store_dtype: str = "float16"
    keep_every: int | None = None
    keep_history: bool | None = None

    def validate(self) -> None:
        _check_choice("output.codec", self.codec, CODECS)
        _check_int("output.crf", self.crf, 0, 51)
        _check_choice("output.store_dtype", self.store_dtype, STORE_DTYPES)
        if self.keep_every is not None:
            _check_int("output.keep_every", self.keep_every, 0)
        if self.keep_history is not None and not isinstance(self.keep_history, bool):
            raise SpecError("output.keep_history", f"must be true or false, got {self.keep_history!r}")

    def resolved(self) -> OutputSettings:
        """Validated, with the retention fields left ``None`` taken from ``supergen.storage``."""
        from supergen_dask import config

        out = dataclasses.replace(
            self,
            keep_every=config.get("storage.keep-every") if self.keep_every is None else self.keep_every,
            keep_history=config.get("storage.keep-history")
            if self.keep_history is None
            else self.keep_history,
        )
        out.validate()
        return out


@dataclass(frozen=True)
class RenderSpec:
    """One render request, with diffusers' argument names.

    ``guidance_scale_2`` is the second expert's scale of a two-expert model (Wan 2.2 A14B, below
    its boundary timestep); left open it is ``guidance_scale``, as in diffusers.
    ``embedded_guidance_scale`` is the guidance scale a guidance-distilled model (HunyuanVideo)
    takes as an input of its denoiser (that pipeline's ``guidance_scale``; ``guidance_scale`` here
    is real classifier-free guidance for every family); left open it is the model's (6.0).
    ``refine_steps`` is SuperGen's k: the sketch is re-noised to step ``num_inference_steps - k``
    and refined with k tiled steps (k == num_inference_steps skips the sketch and refines pure
    noise); left open it is the model's ``default_refine_fraction`` of the schedule. Sizes are in
    pixels and must be multiples of the model's VAE factor. The default model is the shipped toy.
    """

    prompt: str
    negative_prompt: str = ""
    image: str | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    refine_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    embedded_guidance_scale: float | None = None
    seed: int = 0
    model: str = "toy-wan"
    scheduler: str | None = None
    dtype: str = "float32"
    fps: int | None = None
    tile_policy: str = "balanced"
    sketch_height: int | None = None
    sketch_width: int | None = None
    shift: ShiftSettings = field(default_factory=ShiftSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    anchor: AnchorSettings = field(default_factory=AnchorSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderSpec:
        """Build from a plain mapping (JSON/YAML spec files); unknown keys are errors."""
        if not isinstance(data, dict):
            raise SpecError("spec", f"expected a mapping, got {type(data).__name__}")
        data = dict(data)
        if "prompt" not in data:
            raise SpecError("prompt", "is required")
        for name, sub in (
            ("shift", ShiftSettings),
            ("cache", CacheSettings),
            ("anchor", AnchorSettings),
            ("output", OutputSettings),
        ):
            if name in data:
                data[name] = _from_mapping(sub, data[name], f"{name}.")
        return _from_mapping(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RenderSpec:
        return dataclasses.replace(self, **changes)

    def token(self, revision: str = "") -> str:
        """Stable hash of the (resolved) spec and the model's weights revision: names the render
        and its Dask keys, so the same request on the same weights resumes the same render. The
        conditioning image counts by its content (sha256 of the file), not by its path."""
        spec = self.to_dict()
        if spec["embedded_guidance_scale"] is None:  # renders of models without it keep their names
            del spec["embedded_guidance_scale"]
        if spec["shift"]["order"] == DEFAULT_SHIFT_ORDER:  # renders made before the order existed keep theirs
            del spec["shift"]["order"]
        if self.image is not None:
            from supergen_dask.conditioning import file_digest

            spec["image"] = file_digest(self.image)
        blob = json.dumps({"spec": spec, "revision": revision}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- validation -----------------------------------------------------------------------------
    def model_info(self) -> ModelInfo:
        if not isinstance(self.model, str) or not self.model:
            raise SpecError(
                "model", f"must be a model name or directory; allowed names: {available_models()}"
            )
        try:
            return model_info(self.model)
        except UnknownModelError as exc:
            raise SpecError("model", str(exc)) from None

    def resolved(self) -> RenderSpec:
        """Validate every field and fill the ``None`` ones from the model. Raises ``SpecError``."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise SpecError("prompt", "must be a non-empty string")
        if not isinstance(self.negative_prompt, str):
            raise SpecError("negative_prompt", "must be a string")
        info = self.model_info()
        f = info.spatial_factor
        height = info.native_height * 2 if self.height is None else self.height
        width = info.native_width * 2 if self.width is None else self.width
        min_side = f * info.patch_spatial
        for name, value in (("height", height), ("width", width)):
            _check_int(name, value, min_side)
            if value % f:
                lo, hi = value - value % f, value - value % f + f
                raise SpecError(
                    name,
                    f"{value} is not a multiple of the model's spatial factor {f} (nearest allowed: {lo} or {hi})",
                )
        num_frames = info.native_frames if self.num_frames is None else self.num_frames
        _check_int("num_frames", num_frames, 1)
        if not info.frames_ok(num_frames):
            raise SpecError(
                "num_frames",
                f"{num_frames} frames cannot be taken by {info.name}: allowed {info.allowed_frames_hint()}",
            )
        steps = info.default_steps if self.num_inference_steps is None else self.num_inference_steps
        _check_int("num_inference_steps", steps, 1, 1000)
        k = (
            max(1, round(info.default_refine_fraction * steps))
            if self.refine_steps is None
            else self.refine_steps
        )
        _check_int("refine_steps", k, 1)
        if k > steps:
            raise SpecError("refine_steps", f"k={k} must be <= num_inference_steps ({steps})")
        guidance = info.default_guidance if self.guidance_scale is None else self.guidance_scale
        guidance = _check_number("guidance_scale", guidance, 0.0)
        guidance_2 = self.guidance_scale_2
        if info.guidance_boundary:  # two experts: the second's scale, the first's if not given
            guidance_2 = _check_number(
                "guidance_scale_2", guidance if guidance_2 is None else guidance_2, 0.0
            )
        elif guidance_2 is not None:
            raise SpecError(
                "guidance_scale_2",
                f"model {info.name} has one denoiser (guidance_scale_2 is for Wan 2.2 A14B's second "
                "expert); allowed: [None]",
            )
        embedded = self.embedded_guidance_scale
        if info.embedded_guidance is not None:  # a guidance-distilled model: the model's if not given
            embedded = _check_number(
                "embedded_guidance_scale", info.embedded_guidance if embedded is None else embedded, 0.0
            )
        elif embedded is not None:
            raise SpecError(
                "embedded_guidance_scale",
                f"model {info.name} ({info.family}) takes no embedded guidance (it is for "
                "guidance-distilled models such as HunyuanVideo; use guidance_scale); allowed: [None]",
            )
        _check_int("seed", self.seed, 0, 2**63 - 1)
        if self.scheduler is not None:
            _check_choice("scheduler", self.scheduler, tuple(SCHEDULER_ALIASES))
        _check_choice("dtype", self.dtype, DTYPES)
        fps = info.fps if self.fps is None else self.fps
        _check_int("fps", fps, 1, 240)
        _check_choice("tile_policy", self.tile_policy, TILE_POLICIES)
        for name in ("sketch_height", "sketch_width"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, min_side)
                if value % min_side:
                    raise SpecError(
                        name, f"must be a multiple of {min_side} (VAE factor x patch), got {value}"
                    )
        image = self.image
        if image is not None:
            if not info.supports_image:
                raise SpecError(
                    "image", f"model {info.name} is text-to-video and takes no image; allowed: [None]"
                )
            from supergen_dask.conditioning import ImageFileError, check_image

            try:
                image = check_image(image)
            except ImageFileError as exc:
                raise SpecError("image", str(exc)) from None
        elif info.supports_image:
            raise SpecError(
                "image", f"model {info.name} is image-to-video: give the first frame (--image PATH)"
            )
        for sub in (self.shift, self.cache, self.anchor, self.output):
            if not hasattr(sub, "validate"):
                raise SpecError("spec", f"bad settings object {sub!r}")
            sub.validate()
        if self.anchor.enabled and k == steps:
            raise SpecError(
                "anchor.strength", "anchoring needs a sketch: set refine_steps < num_inference_steps"
            )
        cache = self.cache
        if cache.enabled is None:  # the model's default, written out so the hash holds it
            cache = dataclasses.replace(cache, enabled=info.cache_enabled)
        if cache.enabled:  # the family's tau and the schedule's warm-up, so the hash holds them
            policy = cache.policy(k, info.cache_threshold)
            cache = dataclasses.replace(cache, threshold=policy.threshold, warmup_steps=policy.warmup)
        return self.replace(
            output=self.output.resolved(),
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=steps,
            refine_steps=k,
            guidance_scale=guidance,
            guidance_scale_2=guidance_2,
            embedded_guidance_scale=embedded,
            fps=fps,
            cache=cache,
            image=image,
        )
