"""Specs, plans and the command line."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import tiny_spec
from hypothesis import given, settings
from hypothesis import strategies as st

from supergen_dask import RenderSpec, SpecError, plan_render
from supergen_dask.cli import main


def test_resolution_fills_model_defaults_and_is_stable():
    spec = RenderSpec(prompt="a red circle").resolved()
    assert spec.model == "toy-wan"  # the shipped toy is the default model
    assert (spec.height, spec.width, spec.num_frames, spec.num_inference_steps) == (128, 128, 9, 30)
    assert spec.refine_steps == 18 and spec.guidance_scale == 7.0 and spec.fps == 8  # k = 0.6 of the schedule
    tiny = RenderSpec(prompt="a red circle", model="tiny-random-wan").resolved()
    assert (tiny.num_inference_steps, tiny.refine_steps) == (10, 9)  # Wan's default: k = 0.9
    assert spec.resolved() == spec and spec.token() == RenderSpec(prompt="a red circle").resolved().token()
    assert spec.token() != spec.replace(seed=1).token()


def test_the_default_shift_order_keeps_render_names():
    """A spec that leaves the shift order at its default hashes as before the order existed (the
    same command resumes the render it began); another order names another render."""
    import hashlib

    from supergen_dask.spec import ShiftSettings

    spec = RenderSpec(prompt="a red circle").resolved()
    before = spec.to_dict()
    del before["embedded_guidance_scale"], before["shift"]["order"]  # the spec as it was hashed
    blob = json.dumps({"spec": before, "revision": "r"}, sort_keys=True, separators=(",", ":"))
    assert spec.token("r") == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert spec.replace(shift=ShiftSettings(order="spread")).token("r") != spec.token("r")


def test_spec_files_reject_unknown_fields():
    with pytest.raises(SpecError, match="unknown field") as info:
        RenderSpec.from_dict({"prompt": "x", "colour": "red"})
    assert info.value.field == "colour"
    with pytest.raises(SpecError) as info:
        RenderSpec.from_dict({"prompt": "x", "shift": {"stride": 3}})
    assert info.value.field == "shift.stride"
    with pytest.raises(SpecError, match="required"):
        RenderSpec.from_dict({"seed": 1})


def test_cache_option_of_the_cli():
    from supergen_dask.cli import _cache_option

    assert _cache_option("off") == {"enabled": False}
    assert _cache_option("on") == {"enabled": True}
    assert _cache_option("0.15") == {"enabled": True, "threshold": 0.15}
    for bad in ("fast", "-1", "0", "nan", "inf"):
        with pytest.raises(SpecError) as info:
            _cache_option(bad)
        assert info.value.field == "cache"


def test_k_equal_to_steps_skips_the_sketch():
    plan = plan_render(tiny_spec(refine_steps=6))
    assert plan.sketch is None and plan.refine.steps == tuple(range(6))
    assert "refine_init" in plan.tasks and "upscale" not in plan.tasks


def test_portrait_and_odd_aspects_plan():
    plan = plan_render(tiny_spec(height=200, width=72))
    g = plan.refine.grid
    assert (g.valid_h, g.valid_w) == (25, 9)
    assert g.canvas_h >= 25 and g.canvas_w >= 9 and g.tile_h >= g.tile_w


def test_cli_render_info_and_errors(tmp_path, capsys):
    out = tmp_path / "r"
    args = [
        "render",
        "--prompt",
        "a green square moving up",
        "--height",
        "64",
        "--width",
        "128",
        "--num-frames",
        "5",
        "--num-inference-steps",
        "4",
        "--refine-steps",
        "3",
        "--output-dir",
        str(out),
        "--threads",
        "--workers",
        "1",
        "--no-progress",
        "--lossless",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"video: {out / 'video.mp4'}" in printed and (out / "video.mp4").exists()
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["progress"]["refine"] == "6/6 tiles" and info["progress"]["encode"] is True
    assert main(["render", "--prompt", "x", "--height", "65", "--output-dir", str(tmp_path / "bad")]) == 2
    assert "height" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["models"]) == 0 and "tiny-random-wan" in capsys.readouterr().out


def test_cli_spec_file_with_overrides(tmp_path, capsys):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "prompt": "a cyan circle moving down",
                "height": 64,
                "width": 64,
                "num_frames": 5,
                "num_inference_steps": 3,
                "refine_steps": 2,
                "shift": {"divisions": 4},
            }
        )
    )
    out = tmp_path / "r"
    assert (
        main(
            [
                "render",
                "--spec",
                str(spec_file),
                "--seed",
                "11",
                "--output-dir",
                str(out),
                "--threads",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    stored = json.loads(
        json.dumps(__import__("storage").RenderStore.open(str(out / "render.zarr")).attrs["spec"])
    )
    assert (
        stored["seed"] == 11 and stored["shift"]["divisions"] == 4 and stored["prompt"].startswith("a cyan")
    )


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.integers(0, 40).map(lambda v: v * 8)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["toy-wan", "tiny-random-wan", "unipc", "float16", "fit", "lossless"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_FIELDS = [
    "prompt",
    "negative_prompt",
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "refine_steps",
    "guidance_scale",
    "seed",
    "model",
    "scheduler",
    "dtype",
    "fps",
    "tile_policy",
    "sketch_height",
    "sketch_width",
    "shift",
    "cache",
    "anchor",
    "output",
    "image",
    "colour",
]


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(_FIELDS) | st.integers(0, 3), _VALUES, max_size=6))
def test_spec_parser_accepts_or_names_a_field(changes):
    """Whatever a spec file holds, parsing and planning either succeed or raise ``SpecError``
    naming a field (or ``LimitError`` for a plan too big): never another exception."""
    from supergen_dask.estimate import LimitError

    data = {"prompt": "a red circle", "model": "tiny-random-wan", "num_inference_steps": 4, **changes}
    try:
        plan_render(RenderSpec.from_dict(data))
    except SpecError as exc:
        assert exc.field and str(exc).startswith(exc.field)
    except LimitError as exc:
        assert "supergen.limits" in str(exc)
