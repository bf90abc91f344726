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
