"""Model backends, one module per model family, behind one small protocol (``VideoBackend``).

``model_info(ref)`` says what a model is without loading weights (for planning and validation);
``load_backend(ref, device, dtype)`` gives a backend whose components load lazily. ``ref`` is a
preset name (see ``available_models()``) or a local directory in diffusers layout.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from pipelines.base import ModelInfo, VideoBackend

__all__ = [
    "ModelInfo",
    "VideoBackend",
    "UnknownModelError",
    "available_models",
    "model_directory",
    "model_info",
    "load_backend",
]


class UnknownModelError(KeyError):
    """The model reference is neither a known preset nor a loadable local directory."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


_FAMILIES = {"WanPipeline": "wan"}


def _shipped() -> dict[str, Path]:
    """Checkpoints that ship inside the package, by name."""
    from pipelines.toy.model import weights_dir

    toy = weights_dir()
    return {"toy-wan": toy} if (toy / "model_index.json").is_file() else {}


def model_directory(ref: str) -> Path | None:
    """The directory a model's files are in (a shipped checkpoint or a local directory), or
    ``None`` for a model built in code."""
    shipped = _shipped()
    if ref in shipped:
        return shipped[ref]
    from pipelines import wan

    if ref in wan.preset_names() or not (Path(ref) / "model_index.json").is_file():
        return None
    return Path(ref)


def available_models() -> list[str]:
    """Names of the models that need no files (built in code or shipped in the package)."""
    from pipelines import wan

    return sorted(wan.preset_names() + list(_shipped()))


def _directory_family(ref: str) -> str | None:
    index = Path(ref) / "model_index.json"
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnknownModelError(f"{index}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UnknownModelError(f"{index}: expected a JSON object, got {type(data).__name__}")
    cls = data.get("_class_name", "")
    if not isinstance(cls, str) or cls not in _FAMILIES:
        raise UnknownModelError(
            f"model directory {ref!r} holds a {cls or 'unknown'} pipeline; supported: {sorted(_FAMILIES)}"
        )
    return _FAMILIES[cls]


def _unknown(ref: str) -> UnknownModelError:
    return UnknownModelError(
        f"unknown model {ref!r}: expected one of {available_models()} or a local directory in diffusers "
        "layout (with model_index.json)"
    )


def model_info(ref: str) -> ModelInfo:
    """Static facts of a model (native size, factors, scheduler) without loading weights."""
    from pipelines import wan

    if ref in wan.preset_names():
        return wan.preset_info(ref)
    shipped = _shipped()
    if ref in shipped:
        return dataclasses.replace(_directory_info(wan.directory_info, shipped[ref]), name=ref)
    family = _directory_family(ref)
    if family == "wan":
        return _directory_info(wan.directory_info, ref)
    raise _unknown(ref)


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
    ref: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> VideoBackend:
    """A backend for ``ref`` on ``device``; components load on first use."""
    from pipelines import wan

    if ref in wan.preset_names():
        return wan.load_preset(ref, device, dtype)
    shipped = _shipped()
    if ref in shipped:
        backend = wan.load_directory(shipped[ref], device, dtype)
        backend.info = dataclasses.replace(backend.info, name=ref)
        return backend
    family = _directory_family(ref)
    if family == "wan":
        return wan.load_directory(ref, device, dtype)
    raise _unknown(ref)
