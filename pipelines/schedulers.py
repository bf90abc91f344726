"""Scheduler construction: diffusers schedulers by class name, plus short aliases users can pass."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

__all__ = [
    "SCHEDULER_ALIASES",
    "SCHEDULER_STATE",
    "SUPPORTED",
    "make_scheduler",
    "resolve_scheduler",
]

# Short names a user can give on the command line -> (diffusers class, config overrides).
SCHEDULER_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "unipc": ("UniPCMultistepScheduler", {}),
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
}

# Schedulers whose update is element-wise and deterministic, so a tile may update its own region,
# with the attributes that hold per-element state between steps: name -> "list" (one slot per
# history entry) or "tensor" (one slot). Ancestral/SDE samplers (CogVideoXDPMScheduler among them)
# draw noise inside step(); sample-wide thresholding is not element-wise: neither is listed.
SCHEDULER_STATE: dict[str, dict[str, str]] = {
    "UniPCMultistepScheduler": {"model_outputs": "list", "last_sample": "tensor"},
    "DPMSolverMultistepScheduler": {"model_outputs": "list"},
    "FlowMatchEulerDiscreteScheduler": {},
    "FlowMatchSigmasScheduler": {},
    "EulerDiscreteScheduler": {},
    "DDIMScheduler": {},
    "CogVideoXDDIMScheduler": {},
}
SUPPORTED = set(SCHEDULER_STATE)

# The module of diffusers that defines each supported class. A class is imported from its own
# module, not through ``diffusers``' lazy top-level attributes: on GPU workers a lookup through
# the lazy module while another thread imported diffusers' models kept failing for a whole minute
# (a partially initialised module handed out to break an import-lock cycle is never re-read).
DIFFUSERS_MODULES: dict[str, str] = {
    "UniPCMultistepScheduler": "diffusers.schedulers.scheduling_unipc_multistep",
    "DPMSolverMultistepScheduler": "diffusers.schedulers.scheduling_dpmsolver_multistep",
    "FlowMatchEulerDiscreteScheduler": "diffusers.schedulers.scheduling_flow_match_euler_discrete",
    "EulerDiscreteScheduler": "diffusers.schedulers.scheduling_euler_discrete",
    "DDIMScheduler": "diffusers.schedulers.scheduling_ddim",
    "CogVideoXDDIMScheduler": "diffusers.schedulers.scheduling_ddim_cogvideox",
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
    if config.get("use_dynamic_shifting") and config.get("mu") is not None:
        # an exponential dynamic shift by mu is the static shift exp(mu)
        shift = math.exp(config["mu"])
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


def _flow_match_sigmas_class():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.configuration_utils import register_to_config

    class FlowMatchSigmasScheduler(FlowMatchEulerDiscreteScheduler):
        """Flow-matching Euler whose ``set_timesteps(n)`` alone gives a pipeline's own schedule.

        Some pipelines pass their own sigmas (and a resolution-dependent ``mu``) to
        ``set_timesteps``; the renderer rebuilds schedulers from a class name and a config only, so
        the rule is kept in the config: ``sigma_spacing`` is ``"default"`` (the scheduler's own),
        ``"linspace_to_0"`` (``linspace(1, 0, n + 1)[:-1]``, HunyuanVideo) or
        ``"linspace_to_1_over_n"`` (``linspace(1, 1/n, n)``, LTX-Video), and ``mu`` is the dynamic
        shift used when ``use_dynamic_shifting`` is on.
        """

        @register_to_config
        def __init__(
            self,
            num_train_timesteps: int = 1000,
            shift: float = 1.0,
            use_dynamic_shifting: bool = False,
            base_shift: float | None = 0.5,
            max_shift: float | None = 1.15,
            base_image_seq_len: int = 256,
            max_image_seq_len: int = 4096,
            invert_sigmas: bool = False,
            shift_terminal: float | None = None,
            use_karras_sigmas: bool = False,
            use_exponential_sigmas: bool = False,
            use_beta_sigmas: bool = False,
            time_shift_type: str = "exponential",
            stochastic_sampling: bool = False,
            sigma_spacing: str = "default",
            mu: float | None = None,
        ):
            super().__init__(
                num_train_timesteps=num_train_timesteps,
                shift=shift,
                use_dynamic_shifting=use_dynamic_shifting,
                base_shift=base_shift,
                max_shift=max_shift,
                base_image_seq_len=base_image_seq_len,
                max_image_seq_len=max_image_seq_len,
                invert_sigmas=invert_sigmas,
                shift_terminal=shift_terminal,
                use_karras_sigmas=use_karras_sigmas,
                use_exponential_sigmas=use_exponential_sigmas,
                use_beta_sigmas=use_beta_sigmas,
                time_shift_type=time_shift_type,
                stochastic_sampling=stochastic_sampling,
            )

        def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
            import numpy as np

            spacing = self.config.sigma_spacing
            if sigmas is None and timesteps is None and num_inference_steps is not None:
                n = num_inference_steps
                if spacing == "linspace_to_0":
                    sigmas = np.linspace(1.0, 0.0, n + 1)[:-1]
                elif spacing == "linspace_to_1_over_n":
                    sigmas = np.linspace(1.0, 1 / n, n)
                elif spacing != "default":
                    raise ValueError(f"unknown sigma_spacing {spacing!r}")
            if mu is None:
                mu = self.config.mu
            return super().set_timesteps(
                num_inference_steps, device, sigmas=sigmas, mu=mu, timesteps=timesteps
            )

    return FlowMatchSigmasScheduler


_LOCAL_SCHEDULERS: dict[str, Any] = {}


def __getattr__(name: str):
    # built on first use: diffusers is imported lazily by this module
    if name == "FlowMatchSigmasScheduler":
        if name not in _LOCAL_SCHEDULERS:
            _LOCAL_SCHEDULERS[name] = _flow_match_sigmas_class()
        return _LOCAL_SCHEDULERS[name]
    raise AttributeError(name)


def make_scheduler(class_name: str, config: dict[str, Any]):
    """Instantiate a diffusers scheduler (or one of this module's) from its class name and config."""
    if class_name == "FlowMatchSigmasScheduler":  # this module's own, not diffusers'
        cls = __getattr__(class_name)
    elif class_name in DIFFUSERS_MODULES:
        cls = _diffusers_class(class_name)
    else:
        import diffusers

        cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ValueError(f"unknown scheduler class {class_name!r}")
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    return cls.from_config(clean)


def _diffusers_class(class_name: str):
    """A supported diffusers scheduler class, imported from its defining module.

    Serialised, and looked up again for a while if the module is still half-initialised by
    another thread (Python may hand one out to break an import-lock cycle)."""
    import importlib

    with _IMPORT_LOCK:
        deadline = time.monotonic() + 30
        while True:
            try:
                cls = getattr(importlib.import_module(DIFFUSERS_MODULES[class_name]), class_name, None)
            except (ImportError, AttributeError):  # a dependency half-imported by another thread
                if time.monotonic() > deadline:
                    raise
                cls = None
            if cls is not None or time.monotonic() > deadline:
                return cls
            time.sleep(0.2)
