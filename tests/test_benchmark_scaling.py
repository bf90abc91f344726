"""The scaling benchmark's bookkeeping (its GPU runs happen on the device machine)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "scaling", Path(__file__).resolve().parents[1] / "benchmarks" / "scaling.py"
)
scaling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling)


def _r(task, name, start, seconds, worker="w0", **kw):
    return {
        "task": task,
        "name": name,
        "finished": start + seconds,
        "seconds": seconds,
        "worker": worker,
        **kw,
    }


def test_stage_spans_and_gpu_busy_from_receipts():
    receipts = [
        _r("prompt", "prompt", 0, 2),
        _r("init", "sketch_init", 2, 0.1),
        _r("predict", "sketch/0/0/0/uncond", 2.1, 1, "w0"),
        _r("predict", "sketch/0/0/0/cond", 2.1, 1, "w1"),
        _r("denoise", "sketch/0/0/0", 3.1, 0.1, "w0"),
        _r("upscale", "upscale", 3.2, 1),
        _r("start", "start_0_0", 4.2, 1, "w1"),
        _r("denoise", "refine/1/0/0", 5.2, 2, "w0"),
        _r("denoise", "refine/1/0/1", 5.2, 2, "w1"),
        _r("denoise", "refine/1/0/1", 5.2, 2, "w1", skipped=True),
        _r("decode", "decode_0_0", 7.2, 1),
        _r("encode", "encode", 8.2, 2),
        _r("quality", "quality", 8.2, 1, "w1"),
    ]
    out = scaling.summarise(receipts, wall=10.2, split_sketch=True)
    assert out["prompt_seconds"] == 2 and out["stage1_seconds"] == pytest.approx(1.1)
    assert out["upscale_seconds"] == pytest.approx(2) and out["stage2_seconds"] == pytest.approx(2)
    assert out["decode_seconds"] == 1 and out["encode_seconds"] == 2 and out["end_to_end_seconds"] == 10.2
    # the sketch's combine and the encode are CPU tasks; a skipped receipt did no work
    assert out["gpu_busy_fraction"] == {"w0": round(7 / 10.2, 3), "w1": round(4 / 10.2, 3)}


def test_tiles_sharing_a_card_count_its_busy_time_once():
    """Two GPU slots: a tile's turn begins while the last one's results are still coming back;
    the card's busy time is the union of the tiles' time on it (turn to results landed)."""
    receipts = [
        _r("denoise", "refine/1/0/0", 0.0, 1.5, turn_started=0.2, forward_seconds=1.0),
        _r("denoise", "refine/1/0/1", 0.1, 2.5, turn_started=1.0, forward_seconds=1.5),  # overlaps
        _r("denoise", "refine/1/1/0", 5.0, 1.2, turn_started=5.1, forward_seconds=1.0),
    ]
    out = scaling.summarise(receipts, wall=10.0, split_sketch=True)
    assert out["gpu_busy_fraction"] == {"w0": round((2.5 - 0.2 + 1.0) / 10, 3)}
    assert scaling._calls_per_worker(receipts) == {"w0": {"calls": 3, "seconds": 3.3}}
    assert scaling.union_seconds([]) == 0 and scaling.union_seconds([(0, 1), (0.2, 0.5), (3, 4)]) == 2


def test_stage2_idle_splits_each_cards_wait_into_start_gaps_and_tail():
    receipts = [
        _r("denoise", "refine/1/0/0", 0.0, 1.5, "w0", turn_started=0.0, forward_seconds=1.0),
        _r("denoise", "refine/1/0/1", 0.0, 2.5, "w0", turn_started=2.0, forward_seconds=1.0),  # 1 s gap
        _r("denoise", "refine/1/1/0", 0.5, 1.2, "w1", turn_started=0.5, forward_seconds=1.0),
        _r("denoise", "refine/2/1/0", 1.0, 1.2, "w1", turn_started=1.2, forward_seconds=1.0),  # overlaps
        _r("denoise", "refine/2/1/1", 1.0, 1.2, "w1", turn_started=1.2, skipped=True),
        _r("denoise", "sketch/0/0/0", 0.0, 9.0, "w1", turn_started=0.0, forward_seconds=9.0),
    ]
    assert scaling.stage2_idle(receipts) == {
        "w0": {"calls": 2, "before_first": 0.0, "between": 1.0, "after_last": 0.0},
        "w1": {"calls": 2, "before_first": 0.5, "between": 0.0, "after_last": 0.8},
    }
    assert scaling.stage2_idle([]) == {}


def test_merge_refuses_runs_from_different_cards(tmp_path):
    import json

    for n, card in ((1, "H100"), (2, "H200")):
        (tmp_path / f"{n}.json").write_text(json.dumps({"gpus": n, "machine": {"gpu": card}}))
    with pytest.raises(SystemExit, match="different cards"):
        scaling.merge([str(tmp_path / "1.json"), str(tmp_path / "2.json")])
