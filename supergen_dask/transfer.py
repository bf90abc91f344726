"""Copies between the host and a worker's card that do not stop the card.

A GPU worker runs several tile tasks at once (``supergen.cluster.gpu-slots``) whose model calls
take turns on the card (``worker_models.device_turn``). Kernels run asynchronously: a turn only
queues them, and the card keeps computing after the turn ends, while the next turn queues its
own. Anything in a turn that makes the host wait for the card (``.cpu()``, ``.item()``, a copy
from pageable memory) ends that overlap: the card idles while the host converts arrays. So a
tile's inputs go up from page-locked memory without a wait (``to_device``) and its results come
down into page-locked memory behind an event (``HostCopy``), waited for after the turn.

Allocating page-locked memory makes CUDA synchronize; PyTorch's host allocator keeps the buffers
and hands them out again, so only a worker's first tiles (one allocation per buffer size) wait.

On a CPU device both are plain conversions, so CPU workers and tests take the same path.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["HostCopy", "to_device"]


def _on_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def to_device(
    x: np.ndarray | torch.Tensor, device, dtype: torch.dtype | None = torch.float32
) -> torch.Tensor:
    """Host array or tensor -> tensor on ``device`` as ``dtype`` (``None``: its own); on a CUDA
    device the copy is queued on the current stream from page-locked memory and the host does
    not wait for it (the cast runs on the card, after the copy: a float16 array travels as
    float16)."""
    t = x.detach().contiguous() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    dtype = t.dtype if dtype is None else dtype
    if not _on_cuda(device):
        return t.to(device=device, dtype=dtype)
    pinned = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    pinned.copy_(t)
    # the caching host allocator keeps `pinned` until the queued copy has read it
    return pinned.to(device, non_blocking=True).to(dtype)


def _queue(x: torch.Tensor) -> torch.Tensor:
    """``x``'s host copy: queued into page-locked memory from a card, the tensor itself on a CPU."""
    x = x.detach()
    if x.device.type != "cuda":
        return x.contiguous()
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x.contiguous(), non_blocking=True)
    return host


class HostCopy:
    """Tensors on their way to the host, queued behind the work that computes them.

    ``arrays`` become NumPy arrays of the same shapes and dtypes; ``checks`` are small tensors
    (flags, reductions) that travel with them. Nothing waits until ``wait()``, which returns
    ``(arrays, checks)`` as NumPy values once the copies have landed."""

    def __init__(self, arrays: dict[str, torch.Tensor], checks: dict[str, torch.Tensor] | None = None):
        self._arrays = {k: _queue(v) for k, v in arrays.items()}
        self._checks = {k: _queue(v) for k, v in (checks or {}).items()}
        cards = [v.device for v in (*arrays.values(), *(checks or {}).values()) if v.device.type == "cuda"]
        self._event = torch.cuda.Event() if cards else None
        if cards:  # a worker computes on one card: one event, after every copy
            self._event.record(torch.cuda.current_stream(cards[0]))

    def wait(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if self._event is not None:
            self._event.synchronize()  # releases the GIL: other tasks queue and write meanwhile
        return (
            {k: v.numpy() for k, v in self._arrays.items()},
            {k: v.numpy() for k, v in self._checks.items()},
        )
