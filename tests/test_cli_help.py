"""The CLI a person meets: every `render` option explains itself, with its default and choices."""

from __future__ import annotations

import argparse

from pipelines.schedulers import SCHEDULER_ALIASES
from supergen_dask.cli import build_parser
from supergen_dask.spec import DTYPES, TILE_POLICIES, RenderSpec


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def test_every_render_option_has_help_with_its_default():
    render = _subparser("render")
    options = [a for a in render._actions if a.option_strings and a.dest != "help"]
    assert len(options) > 20
    for a in options:
        assert a.help, f"{a.option_strings[0]} has no help"
        flag = isinstance(a, argparse._StoreTrueAction)
        if not flag and a.dest not in ("spec", "prompt", "output_dir", "address"):
            assert "default" in a.help, f"{a.option_strings[0]}: help names no default: {a.help!r}"


def test_defaults_shown_are_the_default_models():
    help_text = _subparser("render").format_help()
    spec = RenderSpec(prompt="x").resolved()
    for value in (spec.height, spec.num_frames, spec.num_inference_steps, spec.refine_steps, spec.fps):
        assert f"toy-wan: {value}" in help_text


def test_fixed_choices_are_listed():
    help_text = " ".join(_subparser("render").format_help().split())
    for choices in (tuple(SCHEDULER_ALIASES), DTYPES, TILE_POLICIES):
        assert "{" + ",".join(choices) + "}" in help_text
