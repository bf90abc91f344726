"""`supergen evaluate` and the quality record on the toy model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from storage import RenderStore
from supergen_dask.cli import main
from supergen_dask.evaluate import merge_reports, standard_configs
from supergen_dask.graph import STORE_NAME


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
    # the references are the model itself: no residual cache, even where the model's default has it
    cache = {c.name: c.overrides.get("cache") for c in standard_configs(20)}
    assert all(cache[n].enabled is False for n in ("native", "direct", "tiles-no-sketch"))
    assert cache["supergen@0.6"] is None and cache["fixed-tiles@0.6"] is None  # the model's default


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

    # Each finished render was pruned to its final latents; a second run resumes from the
    # records (nothing re-renders) and reports the same numbers.
    for row in report["renders"]:
        store = RenderStore.open(str(Path(row["render_dir"]) / STORE_NAME))
        assert store.attrs["pruned"] is True
        st = store.layout.stages[-1]
        assert np.isfinite(store.read_canvas(st.name, "latents", st.steps[-1])).all()
        if len(st.steps) > 1:
            assert np.isnan(store.read_canvas(st.name, "latents", st.steps[0])).all()
    assert main(args) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["summary"] == report["summary"]

    # Merging: the same renders split into two runs from two machines give the same summary,
    # each row keeps its machine, and unlike or overlapping runs are refused.
    native = {**report, "renders": [r for r in report["renders"] if r["config"] == "native"]}
    tiled = {**report, "renders": [r for r in report["renders"] if r["config"] != "native"]}
    native["settings"] = {**report["settings"], "configs": ["native"], "scales": [1.0]}
    tiled["machine"] = {**report["machine"], "cuda": "some GPU"}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(native))
    b.write_text(json.dumps(tiled))
    merged = tmp_path / "merged"
    assert main(["evaluate", "--merge", str(a), str(b), "--out", str(merged)]) == 0
    both = json.loads(merged.with_suffix(".json").read_text())
    assert both["summary"] == report["summary"]
    assert [p["renders"] for p in both["parts"]] == [1, 2]
    assert {r["machine"]["cuda"] for r in both["renders"]} == {report["machine"]["cuda"], "some GPU"}
    assert "some GPU" in merged.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="repeats render"):
        merge_reports([a, a], tmp_path / "x")
    other = tmp_path / "c.json"
    other.write_text(json.dumps({**native, "settings": {**native["settings"], "seed": 99}}))
    with pytest.raises(ValueError, match="seed"):
        merge_reports([a, other], tmp_path / "x")
