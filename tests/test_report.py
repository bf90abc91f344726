"""The HTML report: opened in a real headless browser, every render shown with its pictures."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_spec

import supergen_dask as sd
from supergen_dask.report import cache_skip_rate, placement, render_html, write_report

pytestmark = pytest.mark.slow


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "the report test needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
    return exe


def _browser(page: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    return subprocess.run(
        [*cmd, *args, page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    )


@pytest.fixture(scope="module")
def renders(tmp_path_factory, request) -> list[Path]:
    client = request.getfixturevalue("client")
    root = tmp_path_factory.mktemp("report")
    specs = [
        tiny_spec(prompt="a red circle moving right", num_inference_steps=4, refine_steps=3),
        tiny_spec(prompt="a <b>green</b> square & more", num_inference_steps=4, refine_steps=3, seed=2),
    ]
    results = sd.render_batch(specs, client, root, progress=False)
    return [r.render_dir for r in results]


def test_report_opens_in_headless_chromium_and_shows_every_render(renders, tmp_path):
    page = write_report([*renders, tmp_path / "not-a-render"], tmp_path / "report")
    dom = _browser(page, "--virtual-time-budget=5000", "--dump-dom").stdout
    sections = re.findall(r'<section class="render"[^>]*data-render="([^"]+)"', dom)
    assert sections == [d.name for d in renders] + ["not-a-render"]
    # each finished render shows its video and its sketch, both loaded by the browser
    shown = re.findall(r'<img class="(poster|sketch)"[^>]*data-shown="1"', dom)
    assert sorted(shown) == ["poster", "poster", "sketch", "sketch"]
    assert "a &lt;b&gt;green&lt;/b&gt; square &amp; more" in dom  # the prompt is text, not markup
    assert "no render store" in dom
    for d in renders:
        assert re.search(rf'href="[^"]*{re.escape(d.name)}/video.mp4"', dom)
        assert re.search(rf'href="[^"]*{re.escape(d.name)}/render.zarr"', dom)
    shot = tmp_path / "shot.png"
    _browser(page, "--window-size=1000,1400", f"--screenshot={shot}")
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1400, 1000)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # pictures and text, not a blank page

    data = json.loads((tmp_path / "report" / "report.json").read_text())
    first = data["renders"][0]
    assert first["status"] == "finished"
    assert set(first["sessions"][0]["stages"]) >= {
        "prompt",
        "sketch",
        "upscale",
        "refine",
        "decode",
        "encode",
    }
    plan = sd.load_plan(renders[0])
    tiles = {st.name: len(st.steps) * st.grid.rows * st.grid.cols for st in plan.stages}
    assert first["tiles"] == {name: f"{n}/{n}" for name, n in tiles.items()}
    assert sum(first["workers"].values()) == sum(tiles.values()) == sum(first["gpus"].values())
    assert first["quality"]["frames"] == 9
    assert "cache_skip_rate" not in first  # no cache: every tile computed


def test_report_command(renders, tmp_path, capsys):
    from supergen_dask.cli import main  # the command, in this process

    assert main(["report", *map(str, renders), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").exists() and (tmp_path / "r" / "report.json").exists()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope" in err


def test_cache_skip_rate_and_placement_from_tile_stats():
    done = np.array([[True, True], [True, False]])
    stats = {"computed": np.array([[1.0, 0.0], [0.0, 0.0]]), "worker": np.array([[7.0, 7.0], [9.0, np.nan]])}
    assert cache_skip_rate(stats, done) == pytest.approx(2 / 3)
    assert cache_skip_rate({"computed": np.ones((2, 2))}, done) is None
    assert cache_skip_rate({}, done) is None
    assert placement(stats, done, {"7": "tcp://a:1"}, "worker") == {"9": 1, "tcp://a:1": 2}
    html = render_html([{"name": "x", "render_dir": "/x", "status": "finished", "cache_skip_rate": 0.25}])
    assert "cache skip rate 25.0%" in html
