"""scripts/toy_diagnostics.py as a smoke run on the shipped toy (the figures: benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("toy_diagnostics", ROOT / "scripts" / "toy_diagnostics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("toy_diagnostics", module)
    spec.loader.exec_module(module)
    return module


def test_diagnostics_report_every_measurement(tmp_path):
    diag = _script()
    out = tmp_path / "d.json"
    assert diag.main(["--out", str(out), "--prompts", "2", "--steps", "2", "--t0", "1", "0.3"]) == 0
    report = json.loads(out.read_text())
    assert [r["t0"] for r in report["from_real_clips"]] == [1.0, 0.3]
    assert all(r["checks"]["n"] == 2 for r in report["from_real_clips"])
    assert set(report["text_distances"]["distance_to"]) == {"left", "up", "down", "blue", "square", "up-down"}
    for key in ("0.95", "0.7", "fresh_0.95"):
        sym = report["symmetry"][key]
        assert sym["time_reversal"] >= 0 and sym["left_right_mirror"] > 0
    assert report["config"]["guidance"] > 0  # the toy's own default


def test_a_real_clip_barely_noised_comes_back_as_its_prompt(tmp_path):
    diag = _script()
    out = tmp_path / "d.json"
    assert (
        diag.main(["--out", str(out), "--prompts", "3", "--steps", "4", "--t0", "0.2", "--guidance", "1"])
        == 0
    )
    checks = json.loads(out.read_text())["from_real_clips"][0]["checks"]
    assert checks["direction"] == 1.0 and checks["one_every_frame"] == 1.0


def test_bad_noise_level_is_refused(tmp_path):
    diag = _script()
    with pytest.raises(SystemExit):
        diag.main(["--out", str(tmp_path / "d.json"), "--t0", "1.5"])
    assert not (tmp_path / "d.json").exists()
