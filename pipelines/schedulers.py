"""Scheduler construction: diffusers schedulers by class name, plus short aliases users can pass."""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["SCHEDULER_ALIASES", "make_scheduler", "resolve_scheduler"]

# Short names a user can give on the command line -> (diffusers class, config overrides).
SCHEDULER_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "unipc": ("UniPCMultistepScheduler", {}),
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
}

# Schedulers whose update is element-wise and deterministic, so a tile may update its own region.
# (Ancestral/SDE samplers draw noise inside step(); sample-wide thresholding is not element-wise.)
SUPPORTED = {
    "UniPCMultistepScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "DDIMScheduler",
}


def resolve_scheduler(
    default_class: str, default_config: dict[str, Any], override: str | None
) -> tuple[str, dict[str, Any]]:
    """The (class name, config) a render uses: the model's own, or an alias applied to it.

    Flow-matching settings of the model (``shift``/``flow_shift``) carry over to the alias, so
    ``flow-euler`` on a UniPC flow model keeps the same sigma schedule shape.
    """
    if override is None:
        return default_class, dict(default_config)
    if override not in SCHEDULER_ALIASES:
        raise KeyError(override)
    cls, extra = SCHEDULER_ALIASES[override]
    config = {k: v for k, v in default_config.items() if not k.startswith("_")}
    if cls == default_class:
        return cls, {**config, **extra}
    flow = bool(config.get("use_flow_sigmas")) or default_class.startswith("FlowMatch")
    shift = config.get("flow_shift", config.get("shift", 1.0))
    if cls == "FlowMatchEulerDiscreteScheduler":
        return cls, {"shift": shift, "num_train_timesteps": config.get("num_train_timesteps", 1000), **extra}
    if flow:
        return cls, {
            "prediction_type": "flow_prediction",
            "use_flow_sigmas": True,
            "flow_shift": shift,
            "num_train_timesteps": config.get("num_train_timesteps", 1000),
            **extra,
        }
    return cls, {**config, **extra}


_IMPORT_LOCK = threading.Lock()


def make_scheduler(class_name: str, config: dict[str, Any]):
    """Instantiate a diffusers scheduler from its class name and config dict."""
    import diffusers

    # diffusers imports its classes lazily on first attribute access; a thread doing that while
    # another thread of the worker imports diffusers' models saw a half-imported module ("unknown
    # scheduler class" for UniPC) on a GPU worker: serialise, and look again before giving up
    with _IMPORT_LOCK:
        cls = None
        for attempt in range(5):
            cls = getattr(diffusers, class_name, None)
            if cls is not None or class_name not in SUPPORTED:
                break
            time.sleep(0.1 * (attempt + 1))
    if cls is None:
        raise ValueError(f"unknown scheduler class {class_name!r}")
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    return cls.from_config(clean)
