"""Models resident on a worker: loaded once per worker process, lazily, on the first task.

This module must stay importable (never ``__main__`` or a notebook cell): Dask pickles functions
by reference to their module, so the cache below lives once per process. A cache defined in
``__main__`` would be shipped, empty, with every task and the model would reload every time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import torch

from pipelines import VideoBackend, load_backend
from pipelines.base import check_offload
from supergen_dask import config

__all__ = [
    "worker_device",
    "gpu_identity",
    "offload_setting",
    "acceleration_setting",
    "worker_settings",
    "get_backend",
    "resident",
    "prompt_embeds",
    "device_turn",
    "worker_name",
    "load_count",
    "clear",
]

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()
# (model, dtype, device, offload, attention, compile) -> backend
_BACKENDS: dict[tuple, VideoBackend] = {}
_EMBEDS: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]] = {}
_LOADS: list[tuple[str, float]] = []
_MAX_EMBEDS = 16
_TURNS: dict[str, threading.Lock] = {}
_THREADS_SET = False
_OFFLOAD_WARNED = False

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def worker_device() -> str:
    """``cuda`` when this process sees a GPU (and the config allows), else ``cpu``."""
    want = config.get("device", "auto")
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    device = "cuda" if use_cuda else "cpu"
    _configure_torch(device)  # once per process, before anything lands on a device
    return device


def _configure_torch(device: str) -> None:
    global _THREADS_SET
    if _THREADS_SET:
        return
    threads = config.get("worker.torch-threads")
    if device == "cpu" and threads:
        torch.set_num_threads(int(threads))
    # On CUDA a worker always computes on its ``cuda:0``: dask-cuda hands each worker every GPU in
    # a rotated CUDA_VISIBLE_DEVICES ("1,0") whose first entry is its own card, the cluster
    # factory pins workers that share cards the same way, and a worker of an existing cluster
    # uses the first card it was given. Choosing by worker name here once put every dask-cuda
    # worker of a 2-GPU machine on one card.
    _THREADS_SET = True


def gpu_identity() -> str:
    """The physical card this process computes on (its UUID), or ``cpu``."""
    if not torch.cuda.is_available() or config.get("device", "auto") == "cpu":
        return "cpu"
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    uuid = getattr(props, "uuid", None)
    return f"GPU-{uuid}" if uuid is not None else f"{props.name}:{getattr(props, 'pci_bus_id', '?')}"


def offload_setting() -> str:
    """``supergen.worker.offload`` (``none``, ``block`` or ``leaf``), checked: ``ValueError``
    naming the setting otherwise."""
    return check_offload(config.get("worker.offload", "none"), "supergen.worker.offload")


def _effective_offload(offload: str, device: str) -> str:
    """Offloading moves weights from CPU memory to a GPU; a CPU worker's weights are in CPU memory
    already, so there it is a no-op (said once per process, not an error: one configuration may
    serve GPU and CPU workers alike)."""
    global _OFFLOAD_WARNED
    if offload == "none" or device != "cpu":
        return offload
    if not _OFFLOAD_WARNED:
        _OFFLOAD_WARNED = True
        logger.warning(
            "supergen.worker.offload=%s has no effect on a CPU worker (its weights are in CPU memory "
            "already): loading without offloading",
            offload,
        )
    return "none"


def acceleration_setting() -> tuple[str | None, bool | str]:
    """``(supergen.worker.attention, supergen.worker.compile)``, checked: ``ValueError`` naming
    the setting otherwise."""
    from pipelines.acceleration import check_attention

    attention = config.get("worker.attention")
    try:
        check_attention(attention)
    except ValueError as exc:
        raise ValueError(f"supergen.worker.attention: {exc}") from None
    compile = config.get("worker.compile", False)
    if not isinstance(compile, bool | str) or compile == "":
        raise ValueError(
            f"supergen.worker.compile must be true, false or a torch.compile mode; got {compile!r}"
        )
    return attention, compile


def get_backend(model: str, dtype: str) -> VideoBackend:
    """The process's backend for ``model`` in ``dtype`` (created on first use, then reused), its
    weights placed as ``supergen.worker.offload`` says, its denoiser's forward as
    ``supergen.worker.attention`` and ``compile`` say."""
    device = worker_device()
    offload = _effective_offload(offload_setting(), device)
    attention, compile = acceleration_setting()
    key = (model, dtype, device, offload, attention, compile)
    backend = _BACKENDS.get(key)
    if backend is None:
        with _LOCK:
            backend = _BACKENDS.get(key)
            if backend is None:
                _configure_torch(device)
                backend = load_backend(
                    model,
                    device=device,
                    dtype=_DTYPES[dtype],
                    offload=offload,
                    attention=attention,
                    compile=compile,
                )
                _BACKENDS[key] = backend
                _LOADS.append((model, time.time()))
    return backend


def worker_settings(dask_worker=None) -> dict:
    """How this worker runs models (for ``client.run``; a render's session records it): its
    ``GPU`` slots, offload mode, attention backend, compile, whether it keeps the text encoder
    on the card and where it queues a tile's scheduler step, from its own configuration (an
    existing cluster's workers may differ from the driver's)."""
    resources = dict(dask_worker.state.total_resources) if dask_worker is not None else {}
    return {
        "gpu_slots": resources.get("GPU"),
        "offload": config.get("worker.offload", "none"),
        "attention": config.get("worker.attention"),
        "compile": config.get("worker.compile", False),
        "keep_text_encoder": bool(config.get("worker.keep-text-encoder")),
        "step_in_turn": bool(config.get("worker.step-in-turn", True)),
    }


def resident() -> list[dict[str, str]]:
    """The backends this process holds: ``model``, ``dtype``, ``device`` and ``offload`` of each
    (for ``client.run``: which workers hold what, and how)."""
    names = ("model", "dtype", "device", "offload", "attention", "compile")
    return [dict(zip(names, key, strict=True)) for key in _BACKENDS]


def prompt_embeds(store, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(negative, positive)`` embeddings of a render, read from its store once per process."""
    key = (store.url, store.instance, str(device))
    cached = _EMBEDS.get(key)
    if cached is None:
        neg, pos = store.read_prompt_embeds()
        cached = (torch.from_numpy(neg).to(device), torch.from_numpy(pos).to(device))
        with _LOCK:
            _EMBEDS[key] = cached
            while len(_EMBEDS) > _MAX_EMBEDS:  # a long batch must not pile up embeddings on the GPU
                _EMBEDS.pop(next(iter(_EMBEDS)))
    return cached


def worker_name() -> str:
    """The address of the Dask worker running this code, or ``local`` outside one."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


@contextlib.contextmanager
def device_turn() -> Iterator[float]:
    """This worker's turn on its device, for queueing a task's model call and the copies of its
    results back to the host; yields the seconds it waited for the turn.

    A GPU worker may run several tile tasks at once (``supergen.cluster.gpu-slots``): while one
    holds the turn, the others read their inputs or write their outputs. Model calls are queued
    in turn, so a card runs one forward after the other and never holds two forwards'
    activations; a task's scheduler step and the copies of its results are queued inside its turn
    (after it with ``supergen.worker.step-in-turn: false``), and waited for after it
    (``supergen_dask.transfer``). One lock per worker
    (threads-mode clusters run several workers in one process, each with its own device share)."""
    lock = _TURNS.setdefault(worker_name(), threading.Lock())  # setdefault is atomic
    t0 = time.perf_counter()
    with lock:
        yield time.perf_counter() - t0


def load_count() -> int:
    """How many backends this process has created (tests check models load once per worker)."""
    return len(_LOADS)


def clear() -> None:
    """Drop every resident model (frees memory; the next task reloads)."""
    with _LOCK:
        _BACKENDS.clear()
        _EMBEDS.clear()
