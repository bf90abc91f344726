"""The region-aware residual cache: when a refinement tile may skip its model call (pure functions).

SuperGen's inter-step cache (``../shared/reference/supergen-method.md`` §3). For each tile at a
refinement step, from what the region did before:

- ``k = mean|o_c - o_c'| / mean|x_c - x_c'|``: the model's gain between the tile's last two
  *computed* steps (inputs ``x``, guided predictions ``o``). Held through a run of skips (the
  public code lets it collapse to 1 by feeding reconstructed outputs back, after which skip runs
  grow without bound);
- ``change = k * mean|x_i - x_{i-1}| / mean|o_c|``: the predicted relative change of the output;
- ``acc += change``; skip while ``acc < tau``, otherwise compute and reset ``acc`` to 0.

A skipped tile's prediction is its input plus the residual of its last computed step at the same
canvas position: ``o = x_i + (o_c - x_c)``. The tensors live canvas-aligned in the store, so a tile
reads them at its current shifted window and shifting never invalidates them.

Region-aware thresholds: every ``interval`` steps the tiles are ranked by the variability (standard
deviation over steps) of their mean |prediction|; the first gets ``tau * (1 + alpha)``, the second
``tau * (1 + alpha / 2)``. ``direction="variable"`` raises the threshold of the most variable tiles
(what the public code does), ``"static"`` that of the least variable ones (what its help text says).

Nothing here touches Dask, Zarr or a model: inputs in, decision out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "CachePolicy",
    "TileCacheState",
    "Decision",
    "decide",
    "gain",
    "reuse",
    "mean_abs",
    "region_scales",
    "update_points",
    "scale_index",
    "CACHE_FIELDS",
]

# the fields of a tile's cache chunk, in order: the step's input, and the input and guided
# prediction of the region's last computed step
CACHE_FIELDS = ("x", "x_computed", "o_computed")

DIRECTIONS = ("variable", "static")


@dataclass(frozen=True)
class CachePolicy:
    """A render's resolved cache settings, in refinement-step indices (0 = the first refine step).

    ``warmup`` first steps and the last step always compute; ``max_skips`` caps a run of skips
    (``None``: no cap); region thresholds are re-ranked after every ``interval`` steps and applied
    from two steps later (so a step waits only for steps well behind it).
    """

    threshold: float
    warmup: int
    alpha: float = 0.5
    interval: int = 5
    direction: str = "variable"
    max_skips: int | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.warmup < 2:
            raise ValueError("warmup must be >= 2: the gain k needs two computed steps")

    def forced(self, index: int, n_steps: int) -> bool:
        """Steps that always run the model: the warm-up and the last."""
        return index < self.warmup or index >= n_steps - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CachePolicy:
        return cls(**d)


@dataclass(frozen=True)
class TileCacheState:
    """What a tile carries from its previous step: the held gain, the accumulated change and the
    length of the current run of skips."""

    k: float = math.nan
    acc: float = 0.0
    skips: int = 0


@dataclass(frozen=True)
class Decision:
    compute: bool
    change: float  # predicted relative change added this step (nan when forced or unknown)
    acc: float  # accumulated change after this step (0 after a compute)
    k: float  # the gain held by the tile
    tau: float
    skips: int  # consecutive skips including this step


def mean_abs(x) -> float:
    """``mean|x|`` of a tensor or array, as a Python float (float64 accumulation)."""
    # summed in float64 without a float64 copy of the tensor (3x faster on a 4K tile's 2M values)
    if hasattr(x, "detach"):
        import torch  # already imported by whoever holds a tensor

        return float(x.detach().abs().sum(dtype=torch.float64)) / max(x.numel(), 1)
    a = np.asarray(x)
    return float(np.abs(a).sum(dtype=np.float64)) / max(a.size, 1)


def gain(out_now, out_prev, in_now, in_prev) -> float:
    """``k = mean|o - o'| / mean|x - x'|`` between two computed steps (nan if the input did not move)."""
    din = mean_abs(in_now - in_prev)
    if not din > 0:
        return math.nan
    return mean_abs(out_now - out_prev) / din


def decide(
    policy: CachePolicy,
    index: int,
    n_steps: int,
    state: TileCacheState,
    delta_in: float,
    out_mag: float,
    tau: float,
) -> Decision:
    """Compute or reuse, for a tile at refinement step ``index`` of ``n_steps``.

    ``delta_in`` is ``mean|x_i - x_{i-1}|`` over the tile's window, ``out_mag`` is ``mean|o_c|`` of
    the region's last computed prediction, ``tau`` the tile's threshold this step.
    """
    if policy.forced(index, n_steps) or not math.isfinite(state.k) or not out_mag > 0:
        return Decision(True, math.nan, 0.0, state.k, tau, 0)
    change = state.k * delta_in / out_mag
    acc = state.acc + change
    capped = policy.max_skips is not None and state.skips >= policy.max_skips
    if acc < tau and not capped:
        return Decision(False, change, acc, state.k, tau, state.skips + 1)
    return Decision(True, change, 0.0, state.k, tau, 0)


def reuse(sample, x_computed, o_computed):
    """A skipped tile's prediction: its input plus the region's last computed residual."""
    return sample + (o_computed - x_computed)


def update_points(policy: CachePolicy, n_steps: int) -> tuple[int, ...]:
    """Refinement-step indices after which the region thresholds are re-ranked (each needs two
    measured steps of every tile)."""
    return tuple(q for q in range(1, n_steps) if (q + 1) % policy.interval == 0 and q + 2 < n_steps)


def scale_index(policy: CachePolicy, n_steps: int, index: int) -> int | None:
    """Which update's scales apply at step ``index`` (position in ``update_points``), or ``None``
    before the first one applies."""
    applicable = [j for j, q in enumerate(update_points(policy, n_steps)) if q + 2 <= index]
    return applicable[-1] if applicable else None


def region_scales(pred_means: np.ndarray, alpha: float, direction: str = "variable") -> np.ndarray:
    """Threshold multipliers ``(rows, cols)`` from each tile's mean |prediction| over the steps so
    far (``(steps, rows, cols)``, at least two steps): the most (``variable``) or least
    (``static``) variable tile gets ``1 + alpha``, the runner-up ``1 + alpha / 2``, others 1.
    Ties go to the lower tile index, so the result never depends on the order tasks ran."""
    m = np.asarray(pred_means, dtype=np.float64)
    if m.ndim != 3 or m.shape[0] < 2:
        raise ValueError(f"need (steps >= 2, rows, cols) mean predictions, got shape {m.shape}")
    std = m.std(axis=0, ddof=1).ravel()
    key = -std if direction == "variable" else std
    order = np.lexsort((np.arange(std.size), key))  # by key, then by index
    scales = np.ones(std.size)
    scales[order[0]] = 1 + alpha
    if std.size > 1:
        scales[order[1]] = 1 + alpha / 2
    return scales.reshape(m.shape[1:])
