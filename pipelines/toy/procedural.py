"""Procedural videos with a tiny prompt grammar: training data for a toy text-to-video model and
resolution-independent ground truth for quality metrics.

Every video shows exactly one flat-coloured shape moving in a straight line at constant speed over
a static background. The prompt names every property of the scene::

    "a {size} {colour} {shape} moving {direction} on a {bg_colour} {bg_style} background"

e.g. ``"a large red circle moving right on a navy gradient background"``. The word sets of each
slot are disjoint, so a prompt parses back unambiguously (``parse_prompt``).

Geometry is defined in normalised coordinates: positions are fractions of the frame's width and
height, shape sizes are fractions of the frame's shorter side, and the background texture is a
function of the normalised position. The same ``Scene`` rendered at 64x64 and at 256x256 therefore
shows the same content, only sharper; edges are anti-aliased analytically from signed distances
(one-pixel coverage ramp), so rendering cost does not depend on a supersampling factor.

Object colours are saturated and bright; background colours are dark or desaturated and their
brightness is modulated only within ``BG_GAIN_RANGE``, so a Euclidean RGB colour mask with tolerance
100 (``supergen_dask.metrics.colour_mask``) never confuses background with object.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "DIRECTIONS",
    "BG_COLOURS",
    "BG_STYLES",
    "BG_GAIN_RANGE",
    "TRAVEL",
    "PROMPT_TEMPLATE",
    "DEFAULT_BACKGROUND",
    "PROMPT_GRAMMAR",
    "Scene",
    "parse_prompt",
    "sample_scene",
    "evaluation_scenes",
    "evaluation_prompts",
    "render_scene",
    "render_scenes",
    "make_batch",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""Object shapes."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (25, 230, 25),
    "blue": (25, 25, 230),
    "yellow": (230, 230, 25),
    "magenta": (230, 25, 230),
    "cyan": (25, 230, 230),
}
"""Object colours: corners of the RGB cube pulled in by 25 (pairwise distance >= 205)."""

SIZES: dict[str, float] = {"small": 0.15, "large": 0.3}
"""Object size as a fraction of the frame's shorter side (circle diameter; squares and triangles
have the circle's area)."""

DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
"""Motion direction as (dx, dy) in image coordinates (x to the right, y downwards)."""

BG_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (100, 100, 100),
    "navy": (20, 28, 75),
    "brown": (90, 55, 25),
    "olive": (80, 80, 25),
    "teal": (20, 70, 70),
}
"""Background base colours: dark or desaturated, far from every object colour."""

BG_STYLES: tuple[str, ...] = ("gradient", "textured")
"""``gradient``: linear brightness ramp (vertical or diagonal); ``textured``: smooth sinusoid mix."""

BG_GAIN_RANGE: tuple[float, float] = (0.6, 1.25)
"""Range of the brightness gain applied to the background colour by gradients and textures."""

TRAVEL: float = 0.4
"""Distance the object travels over a clip, as a fraction of the frame extent along its motion."""

DEFAULT_BACKGROUND: tuple[str, str] = ("black", "gradient")
"""Background of a scene whose prompt names none (toy v2's data): the darkest, plainest one, which
every object colour stands out from."""

PROMPT_TEMPLATE = "a {size} {colour} {shape} moving {direction} on a {bg_colour} {bg_style} background"

PROMPT_GRAMMAR = "toy-shapes"
"""Name of this prompt grammar, as a model trained on it declares it (``ModelInfo.prompt_grammar``)."""

_MARGIN = 0.02  # gap kept between the object's bounding box and the frame edge (frame fractions)
_SQUARE_SIDE = float(np.sqrt(np.pi) / 2)  # square side per unit circle diameter (equal area)
_TRIANGLE_SIDE = float(np.sqrt(np.pi / np.sqrt(3)))  # equilateral triangle side, equal area
_SQRT3 = float(np.sqrt(3.0))

_ALIASES = {"grey": "gray", "texture": "textured", "gradients": "gradient"}
_VOCAB: dict[str, tuple[str, ...]] = {
    "size": tuple(SIZES),
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "direction": tuple(DIRECTIONS),
    "bg_colour": tuple(BG_COLOURS),
    "bg_style": BG_STYLES,
}
_WORD_TO_SLOT = {word: slot for slot, words in _VOCAB.items() for word in words}


@dataclass(frozen=True)
class Scene:
    """One procedural video: a single moving shape over a static background.

    Attributes
    ----------
    shape, colour, size, direction, bg_colour, bg_style : str
        Words of the grammar (see the module constants).
    seed : int
        Seeds the start position, the gradient orientation and the texture; independent of the
        resolution, so the same scene renders the same content at any size.
    """

    shape: str
    colour: str
    size: str
    direction: str
    bg_colour: str
    bg_style: str
    seed: int = 0

    def __post_init__(self) -> None:
        for slot, words in _VOCAB.items():
            if getattr(self, slot) not in words:
                raise ValueError(f"{slot}={getattr(self, slot)!r} is not one of {words}")

    @property
    def prompt(self) -> str:
        """The prompt text, ``PROMPT_TEMPLATE`` filled with this scene's words."""
        return PROMPT_TEMPLATE.format(
            size=self.size,
            colour=self.colour,
            shape=self.shape,
            direction=self.direction,
            bg_colour=self.bg_colour,
            bg_style=self.bg_style,
        )

    @property
    def colour_rgb(self) -> tuple[int, int, int]:
        """RGB triple of the object colour."""
        return COLOURS[self.colour]

    @property
    def bg_rgb(self) -> tuple[int, int, int]:
        """RGB triple of the background base colour (before the gain of the gradient/texture)."""
        return BG_COLOURS[self.bg_colour]

    @classmethod
    def from_prompt(cls, text: str, seed: int = 0) -> Scene:
        """Build the scene a complete prompt describes.

        Raises
        ------
        ValueError
            If a slot of the grammar is missing from ``text``.
        """
        fields = parse_prompt(text)
        missing = [slot for slot in _VOCAB if slot not in fields]
        if missing:
            raise ValueError(f"prompt {text!r} lacks {missing}")
        return cls(seed=seed, **fields)


def parse_prompt(text: str) -> dict[str, str]:
    """Extract the grammar words that appear in a prompt.

    Parameters
    ----------
    text : str
        Any text; matching is case-insensitive and word-based ("grey" reads as "gray").

    Returns
    -------
    dict
        Keys among ``size``, ``colour``, ``shape``, ``direction``, ``bg_colour``, ``bg_style``,
        only for the slots whose words appear; the first occurrence of a slot wins.
    """
    found: dict[str, str] = {}
    for token in re.findall(r"[a-z]+", text.lower()):
        word = _ALIASES.get(token, token)
        slot = _WORD_TO_SLOT.get(word)
        if slot is not None and slot not in found:
            found[slot] = word
    return found


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a scene uniformly over the grammar, with a random seed."""
    words = {slot: words[int(rng.integers(len(words)))] for slot, words in _VOCAB.items()}
    return Scene(seed=int(rng.integers(2**31 - 1)), **words)


def evaluation_scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` scenes with distinct prompts, deterministic in ``seed``.

    The grammar has 1728 prompts; the scenes are the first ``n`` of a seeded permutation of all
    of them (so a longer list extends a shorter one), each with its own render seed.
    """
    combos = list(itertools.product(*_VOCAB.values()))
    if not 0 <= n <= len(combos):
        raise ValueError(f"n must be in [0, {len(combos)}], got {n}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(combos))[:n]
    seeds = rng.integers(2**31 - 1, size=len(combos))[:n]
    return [
        Scene(seed=int(s), **dict(zip(_VOCAB, combos[i], strict=True)))
        for i, s in zip(order, seeds, strict=True)
    ]


def evaluation_prompts(n: int, seed: int = 0) -> list[str]:
    """The prompts of ``evaluation_scenes(n, seed)``."""
    return [scene.prompt for scene in evaluation_scenes(n, seed)]


def _half_extent(scene: Scene) -> tuple[float, float]:
    """Half width and half height of the object's bounding box, in shorter-side units."""
    d = SIZES[scene.size]
    if scene.shape == "circle":
        return d / 2, d / 2
    if scene.shape == "square":
        return d * _SQUARE_SIDE / 2, d * _SQUARE_SIDE / 2
    r = d * _TRIANGLE_SIDE / 2  # half side; apex is 2r/sqrt3 above the centroid
    return r, 2 * r / _SQRT3


def _layout(scene: Scene, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end centre of the object in frame fractions (x, y)."""
    short = min(height, width)
    hx, hy = _half_extent(scene)
    half = np.array([hx * short / width, hy * short / height]) + _MARGIN
    u = rng.random(2)  # drawn before anything depends on the frame size
    dx, dy = DIRECTIONS[scene.direction]
    axis = 0 if dx else 1
    sign = dx if dx else dy
    travel = min(TRAVEL, max(0.0, 1 - 2 * half[axis]))
    start = np.empty(2)
    # across the motion: anywhere that keeps the box inside
    start[1 - axis] = half[1 - axis] + u[1 - axis] * max(0.0, 1 - 2 * half[1 - axis])
    # along the motion: leave room for the whole trip
    lo = half[axis] + u[axis] * max(0.0, 1 - 2 * half[axis] - travel)
    start[axis] = lo if sign > 0 else 1 - lo
    end = start.copy()
    end[axis] += sign * travel
    return start, end


def _background_params(rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Gradient orientation and texture sinusoids (complex frequencies, phases, amplitudes)."""
    orient = int(rng.integers(4))
    freqs = rng.uniform(0.7, 2.5, size=4) * np.exp(1j * rng.uniform(0, 2 * np.pi, size=4))
    phases = rng.uniform(0, 2 * np.pi, size=4)
    amps = rng.uniform(0.5, 1.0, size=4)
    return orient, freqs, phases, amps


_SHAPE_INDEX = {name: i for i, name in enumerate(SHAPES)}
_STYLE_INDEX = {name: i for i, name in enumerate(BG_STYLES)}


def _scene_table(scenes: Sequence[Scene], height: int, width: int) -> dict[str, np.ndarray]:
    """Per-scene parameters as arrays (one row per scene), drawn from each scene's own seed."""
    rows = []
    for scene in scenes:
        rng = np.random.default_rng(scene.seed)
        start, end = _layout(scene, rng, height, width)  # draws first: same layout at any size
        orient, freqs, phases, amps = _background_params(rng)
        rows.append((start, end, orient, freqs, phases, amps))
    return {
        "start": np.array([r[0] for r in rows]),
        "end": np.array([r[1] for r in rows]),
        "orient": np.array([r[2] for r in rows]),
        "freq_u": np.array([r[3].real for r in rows]),
        "freq_v": np.array([r[3].imag for r in rows]),
        "phases": np.array([r[4] for r in rows]),
        "amps": np.array([r[5] for r in rows]),
        "shape": np.array([_SHAPE_INDEX[s.shape] for s in scenes]),
        "style": np.array([_STYLE_INDEX[s.bg_style] for s in scenes]),
        "diameter": np.array([SIZES[s.size] for s in scenes]),
        "obj": np.array([s.colour_rgb for s in scenes], np.float64),
        "bg": np.array([s.bg_rgb for s in scenes], np.float64),
    }


def _gain(p: dict[str, torch.Tensor], u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Background gain ``(B, H, W)`` in ``BG_GAIN_RANGE``; ``u`` is ``(1, 1, W)``, ``v`` ``(1, H, 1)``."""
    lo, hi = BG_GAIN_RANGE
    ramps = torch.stack(torch.broadcast_tensors(v, 1 - v, (u + v) / 2, (1 - u + v) / 2), dim=1)[
        0
    ]  # (4, H, W)
    gradient = ramps[p["orient"]]
    fu, fv = p["freq_u"][:, None, None, :], p["freq_v"][:, None, None, :]
    arg = 2 * math.pi * (fu * u[..., None] + fv * v[..., None])  # (B, H, W, 4)
    waves = p["amps"][:, None, None, :] * torch.sin(arg + p["phases"][:, None, None, :])
    texture = (waves.sum(-1) / p["amps"].sum(-1)[:, None, None] + 1) / 2
    t = torch.where((p["style"] == _STYLE_INDEX["gradient"])[:, None, None], gradient, texture)
    return lo + (hi - lo) * t


def _sdf(shape: torch.Tensor, d: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed distance (shorter-side units, negative inside) to shapes centred at the origin.

    ``shape`` (index into ``SHAPES``) and diameter ``d`` broadcast against ``x`` (to the right) and
    ``y`` (downwards).
    """
    circle = torch.hypot(x, y) - d / 2
    h = d * _SQUARE_SIDE / 2
    qx, qy = x.abs() - h, y.abs() - h
    square = torch.hypot(qx.clamp_min(0), qy.clamp_min(0)) + torch.maximum(qx, qy).clamp_max(0)
    # equilateral triangle, apex up, centred at its centroid (after Inigo Quilez's sdEquilateralTriangle)
    r = d * _TRIANGLE_SIDE / 2
    px = x.abs() - r
    py = -y + r / _SQRT3
    fold = px + _SQRT3 * py > 0
    px, py = torch.where(fold, (px - _SQRT3 * py) / 2, px), torch.where(fold, (-_SQRT3 * px - py) / 2, py)
    px = px - torch.minimum(torch.maximum(px, -2 * r), torch.zeros_like(px))
    triangle = -torch.hypot(px, py) * torch.sign(py)
    return torch.where(
        shape == _SHAPE_INDEX["circle"],
        circle,
        torch.where(shape == _SHAPE_INDEX["square"], square, triangle),
    )


def render_scenes(
    scenes: Sequence[Scene], height: int, width: int, frames: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Render many scenes at once (on any torch device: training draws its data on the GPU).

    Returns
    -------
    torch.Tensor
        ``(len(scenes), frames, height, width, 3)`` uint8 RGB on ``device``; row ``i`` is
        ``render_scene(scenes[i], ...)``.
    """
    if height < 1 or width < 1 or frames < 1:
        raise ValueError(f"bad size {frames}x{height}x{width}")
    table = _scene_table(scenes, height, width)
    f32 = {"dtype": torch.float32, "device": device}
    p = {
        k: torch.as_tensor(a, device=device) if a.dtype.kind == "i" else torch.as_tensor(a, **f32)
        for k, a in table.items()
    }
    u = ((torch.arange(width, **f32) + 0.5) / width).view(1, 1, width)
    v = ((torch.arange(height, **f32) + 0.5) / height).view(1, height, 1)
    bg = _gain(p, u, v)[..., None] * p["bg"][:, None, None, :]  # (B, H, W, 3)

    t = torch.linspace(0.0, 1.0, frames, **f32) if frames > 1 else torch.zeros(1, **f32)
    centre = p["start"][:, None, :] + t[None, :, None] * (p["end"] - p["start"])[:, None, :]  # (B, F, 2)
    short = float(min(height, width))
    # pixel-centre offsets from the object centre, in shorter-side units: (B, F, 1, W) and (B, F, H, 1)
    x = (u[:, None] - centre[:, :, 0, None, None]) * (width / short)
    y = (v[:, None] - centre[:, :, 1, None, None]) * (height / short)
    per_scene = (-1, 1, 1, 1)
    sdf = _sdf(p["shape"].view(per_scene), p["diameter"].view(per_scene), x, y)  # (B, F, H, W)
    cover = (0.5 - sdf * short).clamp(0.0, 1.0)[..., None]  # one-pixel ramp
    obj = p["obj"][:, None, None, None, :]
    video = bg[:, None] + cover * (obj - bg[:, None])
    return video.round().clamp(0, 255).to(torch.uint8)


def render_scene(scene: Scene, height: int, width: int, frames: int) -> np.ndarray:
    """Render a scene.

    Parameters
    ----------
    scene : Scene
    height, width : int
        Frame size in pixels; content is defined in normalised coordinates, so any size shows the
        same video.
    frames : int
        Number of frames; the object covers the same path whatever the count (first frame at the
        start, last frame at the end).

    Returns
    -------
    np.ndarray
        ``(frames, height, width, 3)`` uint8 RGB.
    """
    return render_scenes([scene], height, width, frames)[0].numpy()


def make_batch(
    rng: np.random.Generator, n: int, height: int, width: int, frames: int
) -> tuple[np.ndarray, list[str]]:
    """Random training clips with their prompts.

    Returns
    -------
    videos : np.ndarray
        ``(n, frames, height, width, 3)`` uint8.
    prompts : list of str
        ``prompts[i]`` describes ``videos[i]``.
    """
    scenes = [sample_scene(rng) for _ in range(n)]
    return render_scenes(scenes, height, width, frames).numpy(), [s.prompt for s in scenes]
