"""Model backends, one module per model family, behind one small protocol (``VideoBackend``).

``model_info(ref)`` says what a model is without loading weights (for planning and validation);
``load_backend(ref, device, dtype, offload)`` gives a backend whose components load lazily. ``ref`` is a
preset name (see ``available_models()``) or a local directory in diffusers layout, whose family
is read from ``model_index.json``.

A family is a module of this package that defines ``DEFAULTS`` (a ``FamilyDefaults``),
``directory_info(path)`` and ``load_directory(path, device, dtype)``, and optionally
``preset_names()``, ``preset_info(name)`` and ``load_preset(name, device, dtype)``. Adding a
family is adding such a module: the registry below finds it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from pipelines.base import (
    OFFLOAD_MODES,
    FamilyDefaults,
    ImageCondition,
    ModelDirectoryError,
    ModelInfo,
    VideoBackend,
    check_directory,
    check_offload,
)

__all__ = [
    "FamilyDefaults",
    "ImageCondition",
    "ModelInfo",
    "VideoBackend",
    "OFFLOAD_MODES",
    "UnknownModelError",
    "ModelDirectoryError",
    "model_directory",
    "available_models",
    "families",
    "model_info",
    "transformer_config",
    "load_backend",
]

# modules of this package that are not families
_NOT_FAMILIES = {"acceleration", "base", "schedulers", "text", "toy"}


class UnknownModelError(KeyError):
    """The model reference is neither a known preset nor a loadable local directory."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@functools.cache
def _family_modules() -> dict[str, ModuleType]:
    """Every family module of this package, by family name."""
    out = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name in _NOT_FAMILIES or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        defaults = getattr(module, "DEFAULTS", None)
        if isinstance(defaults, FamilyDefaults):
            out[defaults.family] = module
    return dict(sorted(out.items()))


def families() -> dict[str, FamilyDefaults]:
    """Each family's defaults (native size, frame rule, k fraction, steps, guidance), by name."""
    return {name: m.DEFAULTS for name, m in _family_modules().items()}


def _pipeline_families() -> dict[str, str]:
    return {cls: name for name, d in families().items() for cls in d.pipelines}


def _presets() -> dict[str, ModuleType]:
    out = {}
    for module in _family_modules().values():
        if hasattr(module, "preset_names"):
            out.update({name: module for name in module.preset_names()})
    return out


def _shipped() -> dict[str, Path]:
    """Checkpoints that ship inside the package, by name."""
    # pipelines.toy.model.weights_dir(), without importing that module (and diffusers with it):
    # planning, `supergen report` and `--help` read only the checkpoint's JSON files
    toy = Path(__file__).with_name("toy") / "weights"
    return {"toy-wan": toy} if (toy / "model_index.json").is_file() else {}


def model_directory(ref: str) -> Path | None:
    """The directory a model's files are in (a shipped checkpoint or a local directory), or
    ``None`` for a model built in code."""
    shipped = _shipped()
    if ref in shipped:
        return shipped[ref]
    if ref in _presets() or not (Path(ref) / "model_index.json").is_file():
        return None
    return Path(ref)


def available_models() -> list[str]:
    """Names of the models that need no files (built in code or shipped in the package)."""
    return sorted(list(_presets()) + list(_shipped()))


def _directory_module(ref: str | Path) -> ModuleType | None:
    """The family module for a local directory (None if ``ref`` is no directory), after checking
    that the directory holds every component the family needs, in safetensors."""
    root = Path(ref)
    if not root.is_dir():
        return None
    index = root / "model_index.json"
    if not index.is_file():
        raise UnknownModelError(
            f"model directory {str(ref)!r} has no model_index.json: not a diffusers pipeline directory"
        )
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnknownModelError(f"{index}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UnknownModelError(f"{index}: expected a JSON object, got {type(data).__name__}")
    cls = data.get("_class_name", "")
    known = _pipeline_families()
    if not isinstance(cls, str) or cls not in known:
        raise UnknownModelError(
            f"model directory {str(ref)!r} holds a {cls or 'unknown'} pipeline; supported: {sorted(known)}"
        )
    module = _family_modules()[known[cls]]
    check_directory(root, module.DEFAULTS.components)
    return module


def _unknown(ref: str) -> UnknownModelError:
    return UnknownModelError(
        f"unknown model {ref!r}: expected one of {available_models()} or a local directory in diffusers "
        "layout (with model_index.json)"
    )


def model_info(ref: str) -> ModelInfo:
    """Static facts of a model (native size, factors, scheduler) without loading weights."""
    presets = _presets()
    if ref in presets:
        return presets[ref].preset_info(ref)
    shipped = _shipped()
    if ref in shipped:
        module = _directory_module(shipped[ref])
        return dataclasses.replace(_directory_info(module.directory_info, shipped[ref]), name=ref)
    try:
        module = _directory_module(ref)
    except ModelDirectoryError as exc:
        raise UnknownModelError(str(exc)) from None
    if module is None:
        raise _unknown(ref)
    return _directory_info(module.directory_info, ref)


def transformer_config(ref: str) -> dict[str, Any] | None:
    """The denoiser's config (diffusers' ``transformer/config.json``; a preset's own config), for
    cost estimates; ``None`` when the model has none that can be read."""
    presets = _presets()
    if ref in presets:
        getter = getattr(presets[ref], "preset_transformer_config", None)
        return None if getter is None else getter(ref)
    root = model_directory(ref)
    path = None if root is None else root / "transformer" / "config.json"
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _directory_info(read, ref: str) -> ModelInfo:
    """``read(ref)``, with a missing or broken file of the model directory as ``UnknownModelError``."""
    try:
        return read(ref)
    except FileNotFoundError as exc:
        raise UnknownModelError(
            f"model directory {ref!r} is incomplete: {exc.filename or exc} is missing"
        ) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise UnknownModelError(f"model directory {ref!r}: {exc}") from None


def load_backend(
    ref: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    offload: str = "none",
    attention: str | None = None,
    compile: bool | str = False,
) -> VideoBackend:
    """A backend for ``ref`` on ``device``; components load on first use. ``offload`` (one of
    ``OFFLOAD_MODES``): ``"block"`` or ``"leaf"`` keep the weights of the denoiser and the encoders
    in CPU memory and move them to ``device`` piece by piece for each forward (``pipelines.base.place``),
    for a model bigger than the card; the outputs are the same. ``attention`` and ``compile`` speed
    up the denoiser's forward (``pipelines.acceleration``; the outputs change by round-off only)."""
    from pipelines.acceleration import check_attention

    offload = check_offload(offload)
    backend = _load_backend(ref, device, dtype)
    backend.offload = offload
    backend.attention, backend.compile = check_attention(attention), compile
    return backend


def _load_backend(ref: str, device: str | torch.device, dtype: torch.dtype) -> VideoBackend:
    presets = _presets()
    if ref in presets:
        return presets[ref].load_preset(ref, device, dtype)
    shipped = _shipped()
    if ref in shipped:
        backend = _directory_module(shipped[ref]).load_directory(shipped[ref], device, dtype)
        backend.info = dataclasses.replace(backend.info, name=ref)
        return backend
    try:
        module = _directory_module(ref)
        if module is None:
            raise _unknown(ref)
        return module.load_directory(ref, device, dtype)
    except ModelDirectoryError as exc:
        raise UnknownModelError(str(exc)) from None
