"""Does a toy video show what its prompt says? Per clip: exactly one object in every frame, of
the prompted colour and shape, moving in the prompted direction.

Pure numpy/scipy on uint8 ``(F, H, W, 3)`` clips; used by ``scripts/train_toy.py`` on held-out
grammar prompts at native size. Stricter than ``metrics.duplication``'s median count: a doubled
blob in one frame fails the clip.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from pipelines.toy import COLOURS, DIRECTIONS, parse_prompt
from supergen_dask.metrics import DEFAULT_TOL, colour_mask, count_objects

__all__ = ["judge_clip", "shape_of", "scene_accuracy", "FILL_SQUARE", "FILL_CIRCLE"]

FILL_SQUARE = 0.9
"""Filled share of its bounding box above which a blob is a square (ideal 1.0)."""
FILL_CIRCLE = 0.66
"""...above which (and up to ``FILL_SQUARE``) a circle (ideal pi/4 = 0.785); below, a triangle (0.5)."""


def _largest(mask: np.ndarray) -> np.ndarray | None:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if not n:
        return None
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def shape_of(blob: np.ndarray) -> str:
    """``circle``, ``square`` or ``triangle`` from how much of its bounding box a blob fills."""
    ys, xs = np.nonzero(blob)
    fill = blob.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    if fill >= FILL_SQUARE:
        return "square"
    return "circle" if fill >= FILL_CIRCLE else "triangle"


def judge_clip(clip: np.ndarray, prompt: str, tol: float = DEFAULT_TOL, min_travel: float = 0.1) -> dict:
    """Check one clip against its prompt (which must name a colour, a shape and a direction).

    - ``one_every_frame``: exactly one blob of the prompted colour in every frame;
    - ``colour``: the prompted colour in every frame, and no blob of another object colour in any;
    - ``shape``: the largest blob's shape (``shape_of``) is the prompted one in most frames;
    - ``direction``: the blob's centroid moves along the prompted axis, the prompted way, by at
      least ``min_travel`` of the frame, and more along that axis than across it.
    """
    words = parse_prompt(prompt)
    missing = [k for k in ("colour", "shape", "direction") if k not in words]
    if missing:
        raise ValueError(f"prompt {prompt!r} lacks {missing}")
    clip = np.asarray(clip)
    F, H, W, _ = clip.shape
    rgb = COLOURS[words["colour"]]
    counts = np.atleast_1d(count_objects(clip, rgb, tol=tol))
    masks = colour_mask(clip, rgb, tol)
    others = [
        c
        for name, c in COLOURS.items()
        if name != words["colour"] and (count_objects(clip, c, tol=tol) > 0).any()
    ]
    blobs = [_largest(m) for m in masks]
    present = [b is not None and b.sum() > 0 for b in blobs]
    shapes = [shape_of(b) for b, p in zip(blobs, present, strict=True) if p]
    direction = False
    if present[0] and present[-1]:
        c0 = np.array(ndimage.center_of_mass(blobs[0]))[::-1] / (W, H)  # (x, y) frame fractions
        c1 = np.array(ndimage.center_of_mass(blobs[-1]))[::-1] / (W, H)
        dx, dy = DIRECTIONS[words["direction"]]
        axis = 0 if dx else 1
        move = (c1 - c0) * (1, 1)
        along = move[axis] * (dx if dx else dy)
        direction = bool(along >= min_travel and along > abs(move[1 - axis]))
    return {
        "prompt": prompt,
        "counts": [int(c) for c in counts],
        "one_every_frame": bool((counts == 1).all()),
        "colour": bool(all(present) and not others),
        "shape": bool(shapes and sum(s == words["shape"] for s in shapes) > len(shapes) / 2),
        "direction": direction,
    }


def scene_accuracy(judged: Sequence[dict]) -> dict[str, float]:
    """Share of clips passing each check, and all four at once (``all``)."""
    keys = ("one_every_frame", "colour", "shape", "direction")
    n = max(1, len(judged))
    out = {k: sum(j[k] for j in judged) / n for k in keys}
    out["all"] = sum(all(j[k] for k in keys) for j in judged) / n
    out["n"] = len(judged)
    return out
