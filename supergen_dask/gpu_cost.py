"""What a plan will cost on a GPU, scaled from the project's own measurements of one card.

Two committed measurements on one NVIDIA H200 (bf16, the Wan2.1-1.3B-shaped transformer, a tile
of 60x104 latent cells x 21 latent frames = 32,760 tokens, classifier-free guidance as a batch of
two) are the basis:

- ``benchmarks/results/tile_overhead-h200.json``: the bare forward took 1.2456 s (median of 10),
  454 TFLOP/s by ``forward_flops``; a whole tile task took 1.124x the bare forward;
- ``benchmarks/results/scaling-h200.json``: peak GPU memory of a worker during a 4K render of
  5x5 such tiles, 5.79 GiB (``torch.cuda.max_memory_allocated``, two workers on two cards).

A forward of another model or tile size is assumed to run at the same FLOP rate (its FLOPs from
the transformer's config), and its activations to scale with tokens x batch x width. Both are
estimates for that card and bf16 compute, not measurements: a float32 spec runs slower, another
card at its own speed, and very small forwards are bound by per-task overhead, not FLOPs, so no
time is given for them. The prompt, upscale, decode and encode stages are not counted (measured at
4K on one H200: about 2 minutes together, ``scaling-h200.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supergen_dask.plan import RenderPlan, StagePlan

__all__ = ["CARD", "TransformerShape", "forward_flops", "GpuCost", "gpu_cost"]

CARD = "NVIDIA H200"
# measured (see the module docstring)
_TFLOPS = 454.38  # bf16 FLOP/s of the measured forward / 1e12
_TASK_OVER_FORWARD = 1.124
_PEAK_BYTES = 5.791 * 2**30
_PEAK_TOKENS, _PEAK_BATCH = 32760, 2
# forwards shorter than this are overhead-bound: the FLOP rate above does not apply to them
_MIN_FORWARD_SECONDS = 0.02


@dataclass(frozen=True)
class TransformerShape:
    """The sizes of a denoiser that set its cost: blocks, width, feed-forward width, text width,
    and its patch (frames, cells)."""

    layers: int
    dim: int
    ffn: int
    text_dim: int
    patch_t: int = 1
    # weights the per-layer formula of ``params`` leaves out (or counts twice), by layout
    extra_weights: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TransformerShape | None:
        """From a diffusers transformer config (Wan, CogVideoX, HunyuanVideo, LTX names);
        ``None`` if it does not say its depth and width."""
        try:
            layers = int(cfg["num_layers"]) + int(cfg.get("num_single_layers") or 0)
            dim = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
        except (KeyError, TypeError, ValueError):
            return None
        ffn = int(cfg.get("ffn_dim") or 4 * dim)
        text = int(cfg.get("text_dim") or cfg.get("text_embed_dim") or cfg.get("caption_channels") or dim)
        patch = cfg.get("patch_size")
        pt = int(patch[0]) if isinstance(patch, list | tuple) else int(cfg.get("patch_size_t") or 1)
        extra = 0
        if cfg.get("num_single_layers"):
            # dual-stream blocks then single-stream ones (HunyuanVideo): a dual block has a second
            # feed-forward (the text stream's) and two 6-way modulations, 20 d^2 more than the
            # formula; a single block fuses attention and MLP with a 3-way modulation, d^2 less
            dual, single = int(cfg["num_layers"]), int(cfg["num_single_layers"])
            extra = (20 * dual - single) * dim * dim
        return cls(layers, dim, ffn, text, max(1, pt), extra)

    @property
    def params(self) -> int:
        """Weights of the blocks (attention, cross-attention, feed-forward) and the text projection."""
        per_layer = 8 * self.dim * self.dim + 2 * self.dim * self.ffn
        return self.layers * per_layer + self.text_dim * self.dim + self.extra_weights


def forward_flops(shape: TransformerShape, tokens: int, text_tokens: int) -> float:
    """FLOPs (2 x multiply-adds) of one forward of one sample: the dominant terms (as
    ``benchmarks/tile_overhead.py`` counts them for the measured rate)."""
    d, t, c = shape.dim, tokens, text_tokens
    per_layer = (
        8 * t * d * d  # self-attention q, k, v, o
        + 4 * t * t * d  # QK^T and AV
        + 4 * t * d * d  # cross-attention q, o
        + 4 * c * d * d  # cross-attention k, v
        + 4 * t * c * d  # cross-attention
        + 4 * t * d * shape.ffn  # feed-forward
    )
    return shape.layers * per_layer


@dataclass(frozen=True)
class GpuCost:
    """Estimated denoising time and peak GPU memory of a worker, for ``card`` in bf16.

    ``seconds`` is the GPU time of every tile task of both stages on one card (``None`` with the
    reason in ``note`` when the measurement does not transfer); ``peak_bytes`` the memory of a
    worker running the largest tile forward: its weights plus activations; ``tile_tokens`` the
    transformer tokens of one refinement tile.
    """

    card: str
    seconds: float | None
    sketch_seconds: float | None
    peak_bytes: int
    tile_tokens: int
    note: str

    def summary(self, workers: int = 1) -> str:
        import dask.utils

        mem = f"GPU memory per worker ~{dask.utils.format_bytes(self.peak_bytes)} (denoising)"
        if self.seconds is None:
            return f"{mem}; no time estimate: {self.note}"
        per = self.seconds / max(1, workers)
        return (
            f"{mem}; denoising ~{_duration(self.seconds)} of GPU time"
            + (f" (~{_duration(per)} on {workers} GPUs)" if workers > 1 else "")
            + f" -- an estimate for one {self.card} in bf16, {self.note}"
        )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _tokens(stage: StagePlan, patch: int, patch_t: int) -> int:
    g = stage.grid
    return -(-stage.latent_frames // patch_t) * (g.tile_h // patch) * (g.tile_w // patch)


def gpu_cost(plan: RenderPlan, config: dict[str, Any] | None) -> GpuCost | None:
    """The estimate for ``plan`` given its model's transformer ``config`` (``None`` when the
    config does not say the model's size)."""
    shape = None if config is None else TransformerShape.from_config(config)
    if shape is None:
        return None
    p, c = plan.model.patch_spatial, plan.model.text_tokens
    batch = 2 if plan.cfg else 1
    rate = _TFLOPS * 1e12
    ref = TransformerShape(30, 1536, 8960, 4096, 1)  # the measured 1.3B shape
    # activation bytes per token, sample and unit of width, from the measured peak
    act_per = (_PEAK_BYTES - ref.params * 2) / (_PEAK_TOKENS * _PEAK_BATCH * (ref.dim + ref.ffn))
    stage_seconds, longest, tokens_max, act = {}, 0.0, 0, 0.0
    for st in plan.stages:
        tokens = _tokens(st, p, shape.patch_t)
        tokens_max = tokens  # the refinement tile's (the last stage)
        per_task = 1 if st.split_guidance else batch  # split: one branch per task (and card)
        forward = batch * forward_flops(shape, tokens, c) / rate  # both branches
        longest = max(longest, forward * per_task / batch)
        act = max(act, act_per * tokens * per_task * (shape.dim + shape.ffn))
        stage_seconds[st.name] = len(st.steps) * st.grid.n_tiles * forward * _TASK_OVER_FORWARD
    weights = shape.params * (4 if plan.spec.dtype == "float32" else 2)
    peak = int(weights + act)
    if longest < _MIN_FORWARD_SECONDS:
        return GpuCost(
            CARD,
            None,
            None,
            peak,
            tokens_max,
            f"its forwards (~{longest * 1e6:.2g} us on an {CARD}) are bound by per-task overhead, "
            "which the measured FLOP rate does not describe",
        )
    dtype = "" if plan.spec.dtype != "float32" else "; this spec computes in float32, which is slower"
    note = (
        f"scaled by FLOPs from the measured 1.3B-shape forward ({_TFLOPS:.0f} TFLOP/s){dtype}; "
        "prompt, upscale, decode and encode not included"
    )
    return GpuCost(CARD, sum(stage_seconds.values()), stage_seconds.get("sketch"), peak, tokens_max, note)
