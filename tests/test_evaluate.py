"""`supergen evaluate` and the quality record on the toy model."""

from __future__ import annotations

import json

from supergen_dask.cli import main
from supergen_dask.evaluate import standard_configs


def test_standard_configs_cover_the_comparison():
    names = [c.name for c in standard_configs(20, (0.6, 0.9), 0.5)]
    assert names == [
        "native",
        "direct",
        "tiles-no-sketch",
        "fixed-tiles@0.6",
        "supergen@0.6",
        "fixed-tiles@0.9",
        "supergen@0.9",
        "supergen-anchor@0.9",
    ]
    k = {c.name: c.overrides.get("refine_steps") for c in standard_configs(20)}
    assert k["supergen@0.6"] == 12 and k["direct"] == 20


def test_evaluate_writes_a_report(tmp_path, capsys):
    out = tmp_path / "report"
    args = [
        "evaluate",
        "--prompts",
        "1",
        "--scales",
        "4",
        "--num-inference-steps",
        "4",
        "--configs",
        "native",
        "fixed-tiles@0.6",
        "supergen@0.6",
        "--root",
        str(tmp_path / "renders"),
        "--out",
        str(out),
        "--threads",
        "--workers",
        "2",
        "--no-progress",
    ]
    assert main(args) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    by = {(s["config"], s["scale"]): s for s in report["summary"]}
    assert set(by) == {("native", 1.0), ("fixed-tiles@0.6", 4.0), ("supergen@0.6", 4.0)}
    for key in (("fixed-tiles@0.6", 4.0), ("supergen@0.6", 4.0)):
        row = by[key]
        assert row["seam_score_last"] > 0 and row["clean_seam_score_last"] > 0 and row["detail_gain"] > 0
    assert "| 4x | supergen@0.6 |" in out.with_suffix(".md").read_text()
    assert "report:" in capsys.readouterr().out
