"""The toy judge: one object in every frame, colour, shape and direction of motion."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.toy import evaluation_scenes, render_scene
from supergen_dask.scene_check import judge_clip, scene_accuracy

KEYS = ("one_every_frame", "colour", "shape", "direction")


@pytest.fixture(scope="module")
def clips():
    return [(s, render_scene(s, 64, 64, 9)) for s in evaluation_scenes(60, seed=7)]


def test_clean_procedural_clips_pass_every_check(clips):
    acc = scene_accuracy([judge_clip(c, s.prompt) for s, c in clips])
    assert acc["all"] == 1.0 and acc["n"] == 60, acc


def test_each_check_fails_on_its_own_fault(clips):
    scene, clip = next((s, c) for s, c in clips if s.size == "small" and s.shape == "circle")
    doubled = clip.copy()
    doubled[4] = np.maximum(doubled[4], np.roll(clip[4], 28, axis=(0, 1)))  # a second blob in one frame
    j = judge_clip(doubled, scene.prompt)
    assert not j["one_every_frame"] and j["counts"][4] == 2
    assert not judge_clip(clip[::-1], scene.prompt)["direction"]
    other = "square" if scene.shape != "square" else "circle"
    assert not judge_clip(clip, scene.prompt.replace(scene.shape, other))["shape"]
    wrong = "red" if scene.colour != "red" else "blue"
    assert not judge_clip(clip, scene.prompt.replace(scene.colour, wrong))["colour"]
    still = np.repeat(clip[:1], len(clip), axis=0)
    assert not judge_clip(still, scene.prompt)["direction"]


def test_prompt_without_the_checked_words_is_refused():
    with pytest.raises(ValueError, match="lacks"):
        judge_clip(np.zeros((2, 8, 8, 3), np.uint8), "a red thing")
