"""scripts/toy_diagnostics.py as a smoke run on the shipped toy (the figures: benchmarks/README.md)."""

from __future__ import annotations

import json

import pytest
from conftest import load_script


def _script():
    return load_script("toy_diagnostics")


def test_diagnostics_report_every_measurement(tmp_path):
    diag = _script()
    out = tmp_path / "d.json"
    assert (
        diag.main(
            ["--out", str(out), "--prompts", "3", "--steps", "4", "--t0", "1", "0.2", "--guidance", "1"]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert [r["t0"] for r in report["from_real_clips"]] == [1.0, 0.2]
    assert all(r["checks"]["n"] == 3 for r in report["from_real_clips"])
    barely_noised = report["from_real_clips"][1]["checks"]  # a real clip comes back as its prompt
    assert barely_noised["direction"] == 1.0 and barely_noised["one_every_frame"] == 1.0
    assert set(report["text_distances"]["distance_to"]) == {"left", "up", "down", "blue", "square", "up-down"}
    for key in ("0.95", "0.7", "fresh_0.95"):
        sym = report["symmetry"][key]
        assert sym["time_reversal"] >= 0 and sym["left_right_mirror"] > 0


def test_bad_noise_level_is_refused(tmp_path):
    diag = _script()
    with pytest.raises(SystemExit):
        diag.main(["--out", str(tmp_path / "d.json"), "--t0", "1.5"])
    assert not (tmp_path / "d.json").exists()
