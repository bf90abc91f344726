"""Toy text-to-video world: procedural clips with a small prompt grammar (see ``procedural``)."""

from pipelines.toy.procedural import (
    BG_COLOURS,
    BG_GAIN_RANGE,
    BG_STYLES,
    COLOURS,
    DIRECTIONS,
    PROMPT_TEMPLATE,
    SHAPES,
    SIZES,
    TRAVEL,
    Scene,
    evaluation_prompts,
    evaluation_scenes,
    make_batch,
    parse_prompt,
    render_scene,
    sample_scene,
)

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
    "Scene",
    "parse_prompt",
    "sample_scene",
    "evaluation_scenes",
    "evaluation_prompts",
    "render_scene",
    "make_batch",
]
