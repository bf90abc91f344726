"""scripts/cache_sweep.py, the tool behind reports/cache-sweep.md: rows per (prompt, scale,
configuration) against the uncached render, resumable, and merged across runs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import dask.config

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("cache_sweep", ROOT / "scripts" / "cache_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_measures_each_threshold_against_the_uncached_render_and_resumes(tmp_path, capsys):
    sweep = _script()
    out = tmp_path / "sweep"
    args = [
        "--model", "tiny-random-wan", "--prompts", "1", "--scales", "4", "--taus", "4.0", "1e9",
        "--group", "1", "--workers", "2", "--root", str(tmp_path / "r"), "--out", str(out),
    ]  # fmt: skip
    with dask.config.set({"supergen.decode.margin": 2, "supergen.upscale.margin": 2}):
        assert sweep.main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "sweep.rows.jsonl").read_text().splitlines()]
    by = {r["config"]: r for r in rows}
    assert set(by) == {"cache-off", "cache@4", "cache@1e+09"}
    off, some, every = by["cache-off"], by["cache@4"], by["cache@1e+09"]
    assert off["skip_rate"] == 0 and math.isinf(off["psnr"]) and off["ssim"] == 1.0
    # a threshold nothing reaches skips every step but the warm-up and the last
    assert every["skip_rate"] > some["skip_rate"] > 0
    assert every["model_calls"] < some["model_calls"] < off["model_calls"] == off["tile_steps"]
    assert math.isfinite(every["psnr"]) and math.isfinite(some["psnr"]) and some["ssim"] < 1
    report = json.loads(out.with_suffix(".json").read_text())
    assert [s["config"] for s in report["summary"]] == ["cache-off", "cache@4", "cache@1e+09"]
    assert "| 4x | cache@4 | 1 |" in out.with_suffix(".md").read_text()
    # a re-run finds every row and renders nothing new (the uncached reference resumes finished)
    with dask.config.set({"supergen.decode.margin": 2, "supergen.upscale.margin": 2}):
        assert sweep.main(args) == 0
    assert len((tmp_path / "sweep.rows.jsonl").read_text().splitlines()) == 3
    # rows of several runs merge into one report
    assert sweep.main(["--merge", str(tmp_path / "sweep.rows.jsonl"), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["summary"] == report["summary"]
