"""Scheduler updates on one region of the canvas, with the scheduler's history kept per region.

Tiled refinement needs "one scheduler step on the whole canvas" while each task only holds its
tile. For the supported schedulers the update is element-wise, so a task may update its own region
if it has that region's slice of every per-element tensor the scheduler keeps between steps
(UniPC's model-output history and last sample, for example). The scalar part of the state
(step index, order warm-up, timestep history) is the same everywhere; a task rebuilds it by
replaying the schedule on a one-element dummy sample, then swaps in its region's tensors. Each
process keeps the replayed schedulers it built (a few kB each), so a task copies the one before
its step instead of replaying every earlier step again (70 ms at step 49 of 50, measured on a
CPU, against ~1 ms for the copy).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from pipelines.schedulers import SCHEDULER_STATE, SUPPORTED, make_scheduler

__all__ = [
    "SchedulerRef",
    "state_slots",
    "RegionStep",
    "NonFiniteError",
    "check_finite",
    "finite_flags",
    "raise_unless_finite",
    "check_tileable",
    "renoise",
    "initial_noise_sigma",
]

# Attributes holding per-element state between steps, per scheduler class (kept by the backends).
_STATE_ATTRS: dict[str, dict[str, str]] = SCHEDULER_STATE


@dataclass(frozen=True)
class SchedulerRef:
    """A scheduler by class name and config, plus the schedule length: enough to rebuild it."""

    class_name: str
    config: tuple[tuple[str, Any], ...]
    num_inference_steps: int

    @classmethod
    def create(cls, class_name: str, config: dict[str, Any], num_inference_steps: int) -> SchedulerRef:
        items = tuple(sorted((k, _freeze(v)) for k, v in config.items() if not k.startswith("_")))
        return cls(class_name, items, num_inference_steps)

    def config_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.config}

    def build(self):
        sched = make_scheduler(self.class_name, self.config_dict())
        sched.set_timesteps(self.num_inference_steps, device="cpu")
        return sched

    def timesteps(self) -> list[float]:
        return [float(t) for t in self.build().timesteps]

    def to_dict(self) -> dict:
        return {
            "class_name": self.class_name,
            "config": self.config_dict(),
            "num_inference_steps": self.num_inference_steps,
        }


def _freeze(v):
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v):
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def check_tileable(ref: SchedulerRef) -> None:
    """Raise ValueError if this scheduler cannot be stepped region by region."""
    if ref.class_name not in SUPPORTED or ref.class_name not in _STATE_ATTRS:
        raise ValueError(
            f"scheduler {ref.class_name} is not supported for tiled stepping; supported: {sorted(_STATE_ATTRS)}"
        )
    cfg = ref.config_dict()
    if cfg.get("thresholding"):
        raise ValueError(
            "dynamic thresholding is a whole-sample operation and cannot be tiled; set thresholding=False"
        )
    if "sde" in str(cfg.get("algorithm_type", "")):
        raise ValueError("SDE solvers draw noise inside step(); use a deterministic algorithm_type")


def state_slots(ref: SchedulerRef) -> dict[str, int]:
    """Per-element state arrays a region must carry between steps: name -> number of slots."""
    out = {}
    for name, kind in _STATE_ATTRS.get(ref.class_name, {}).items():
        out[name] = int(ref.config_dict().get("solver_order", 2)) if kind == "list" else 1
    return out


_REPLAYED: OrderedDict[tuple[SchedulerRef, int, int], Any] = OrderedDict()
_REPLAYED_MAX = 512  # schedulers kept per process, oldest dropped first (a 50-step render's: ~50)
_REPLAYED_LOCK = threading.Lock()


def replayed(ref: SchedulerRef, begin: int, index: int):
    """A fresh scheduler as it stands before step ``index`` of a stage that began at ``begin``,
    with one-element dummy history: a copy of the process's replay, continued from the nearest
    earlier replay of the same stage when this one was never built."""
    with _REPLAYED_LOCK:
        start = next(
            (j for j in range(index, begin - 1, -1) if (ref, begin, j) in _REPLAYED),
            None,
        )
        sched = copy.deepcopy(_REPLAYED[(ref, begin, start)]) if start is not None else None
    if sched is None:
        start, sched = begin, ref.build()
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(begin)
    dummy = torch.zeros(1, 1, 1, 1, 1)
    for i in range(start, index):
        sched.step(torch.zeros_like(dummy), sched.timesteps[i], dummy, return_dict=False)
    if start != index:
        with _REPLAYED_LOCK:
            _REPLAYED[(ref, begin, index)] = copy.deepcopy(sched)
            while len(_REPLAYED) > _REPLAYED_MAX:
                _REPLAYED.popitem(last=False)
    return sched


class RegionStep:
    """The scheduler as it stands before step ``index`` of a stage that began at ``begin``.

    ``present()`` says which state slots are live (and must be read from the store), ``load()``
    puts a region's tensors in, ``step()`` advances the region and returns the new sample plus the
    state slots to write.
    """

    def __init__(self, ref: SchedulerRef, begin: int, index: int):
        if not begin <= index < ref.num_inference_steps:
            raise ValueError(f"step {index} outside the stage [{begin}, {ref.num_inference_steps})")
        self.ref = ref
        self.index = index
        self.kinds = _STATE_ATTRS[ref.class_name]
        sched = replayed(ref, begin, index)
        self.scheduler = sched
        self.timestep = sched.timesteps[index]

    def present(self) -> dict[str, list[int]]:
        """Live slots of each state attribute (``[0]`` for a plain tensor attribute)."""
        out: dict[str, list[int]] = {}
        for name, kind in self.kinds.items():
            value = getattr(self.scheduler, name)
            if kind == "list":
                out[name] = [i for i, v in enumerate(value) if v is not None]
            else:
                out[name] = [0] if value is not None else []
        return out

    def load(self, state: dict[str, dict[int, torch.Tensor]]) -> None:
        """Replace the dummy history with this region's tensors (``name -> {slot: tensor}``)."""
        for name, slots in self.present().items():
            have = state.get(name, {})
            missing = [s for s in slots if s not in have]
            if missing:
                raise ValueError(f"scheduler state {name} slots {missing} are needed but were not given")
            if self.kinds[name] == "list":
                value = list(getattr(self.scheduler, name))
                for s in slots:
                    value[s] = have[s]
                setattr(self.scheduler, name, value)
            elif slots:
                setattr(self.scheduler, name, have[0])

    def scale_model_input(self, sample: torch.Tensor) -> torch.Tensor:
        """The scheduler's input scaling (identity for flow matching, which has none)."""
        scale = getattr(self.scheduler, "scale_model_input", None)
        return sample if scale is None else scale(sample, self.timestep)

    def step(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, dict[int, torch.Tensor]]]:
        """One update of this region. Returns ``(new_sample, state_to_store)``."""
        new = self.scheduler.step(model_output, self.timestep, sample, return_dict=False)[0]
        state: dict[str, dict[int, torch.Tensor]] = {}
        for name, kind in self.kinds.items():
            value = getattr(self.scheduler, name)
            if kind == "list":
                state[name] = {i: v for i, v in enumerate(value) if v is not None}
            elif value is not None:
                state[name] = {0: value}
        return new, state


def renoise(ref: SchedulerRef, begin: int, clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Noise clean latents to the level of schedule step ``begin`` with the scheduler's own rule
    (``add_noise``, or flow matching's ``scale_noise``: sigma * noise + (1 - sigma) * x)."""
    sched = ref.build()
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(begin)
    t = sched.timesteps[begin].reshape(1)
    if hasattr(sched, "add_noise"):
        return sched.add_noise(clean, noise, t)
    return sched.scale_noise(clean, t, noise)


def initial_noise_sigma(ref: SchedulerRef) -> float:
    """Scale of pure noise at the start of the schedule (``init_noise_sigma``)."""
    return float(getattr(ref.build(), "init_noise_sigma", 1.0))


class NonFiniteError(FloatingPointError):
    """A denoising step produced NaN or infinite latents; nothing of that tile is written."""


FLOAT16_MAX = 65504.0


def finite_flags(latents: torch.Tensor, store_dtype: str = "float32") -> torch.Tensor:
    """``check_finite``'s two questions as one tensor on the latents' device, ``[all finite,
    beyond float16's range]``, so the answer can travel with a tile's results
    (``supergen_dask.transfer.HostCopy``) instead of stopping the card to be read."""
    finite = torch.isfinite(latents).all()
    if store_dtype != "float16":
        return torch.stack([finite, torch.zeros_like(finite)])
    return torch.stack([finite, latents.abs().amax() > FLOAT16_MAX])


def raise_unless_finite(flags, key, guidance_scale: float, dtype: str) -> None:
    """Raise ``NonFiniteError`` naming the tile ``key`` (a ``TileKey``: stage, step, row, col)
    from ``finite_flags`` read back on the host."""
    finite, beyond = (bool(f) for f in flags)
    where = f"{key.stage} step {key.step} tile ({key.row}, {key.col}) with guidance_scale {guidance_scale:g}"
    if not finite:
        raise NonFiniteError(
            f"non-finite latents (NaN or inf) from {where} and dtype {dtype}: lower guidance_scale, "
            "or compute in float32"
        )
    if beyond:
        raise NonFiniteError(
            f"non-finite latents in float16 storage (beyond {FLOAT16_MAX:g}) from {where}: lower "
            "guidance_scale, or store in float32 (output.store_dtype: float32)"
        )


def check_finite(
    latents: torch.Tensor, key, guidance_scale: float, dtype: str, store_dtype: str = "float32"
) -> None:
    """Raise ``NonFiniteError`` naming the tile ``key`` unless every value of ``latents`` is
    finite (and, stored as ``float16``, within its range).

    One reduction on the tile, so a render stops at the first bad step instead of writing NaN
    that every later step, the decode and the video inherit.
    """
    raise_unless_finite(finite_flags(latents, store_dtype).cpu(), key, guidance_scale, dtype)
