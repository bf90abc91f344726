"""Faster forwards of a loaded denoiser: the attention kernel it calls and ``torch.compile``.

Both are worker settings (``supergen.worker.attention`` and ``supergen.worker.compile``), not
part of a render's spec: they change how fast a forward runs, and its result only by kernel
round-off. ``benchmarks/tile_overhead.py --variants`` times each choice on a GPU.

The attention kernels are diffusers' attention backends (``ModelMixin.set_attention_backend``);
``NATIVE_ATTENTION`` are the ones PyTorch itself provides (on Hopper: cuDNN, flash and
memory-efficient scaled-dot-product attention), which need no extra package. Families whose
attention does not dispatch through diffusers' backends keep their own kernel.
"""

from __future__ import annotations

import torch

__all__ = ["NATIVE_ATTENTION", "attention_backends", "check_attention", "accelerate"]

NATIVE_ATTENTION = ("native", "_native_cudnn", "_native_flash", "_native_efficient", "_native_math", "flex")


def attention_backends() -> tuple[str, ...]:
    """Every attention backend name this diffusers knows (most need an extra package)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return tuple(b.value for b in AttentionBackendName)


def check_attention(name: str | None) -> str | None:
    """``name`` if diffusers knows it as an attention backend (None: the model's default), else a
    ``ValueError`` listing the ones PyTorch provides."""
    if name is None or name in attention_backends():
        return name
    raise ValueError(
        f"unknown attention backend {name!r}; PyTorch's own: {', '.join(NATIVE_ATTENTION)} "
        "(diffusers.models.attention_dispatch.AttentionBackendName lists the rest)"
    )


def accelerate(
    module: torch.nn.Module, attention: str | None = None, compile: bool | str = False
) -> torch.nn.Module:
    """Set ``module``'s attention backend and compile its forward (in place; returns it).

    ``compile``: False, True (``torch.compile``'s default mode) or a mode name
    (``"max-autotune-no-cudagraphs"``, ...). Compilation happens at the first forward of each
    input shape (a render has two: the sketch's tiles and the refinement's), once per worker.
    """
    check_attention(attention)
    if attention is not None:
        if not hasattr(module, "set_attention_backend"):
            raise ValueError(f"{type(module).__name__} does not take diffusers' attention backends")
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        # set_attention_backend also makes the backend every model's default in this process
        # (the registry's active backend): only ``module`` is asked for, so that is put back
        before = _AttentionBackendRegistry._active_backend
        try:
            module.set_attention_backend(attention)
        finally:
            _AttentionBackendRegistry.set_active_backend(before)
    if compile:
        module.compile(**({} if compile is True else {"mode": str(compile)}))
    return module
