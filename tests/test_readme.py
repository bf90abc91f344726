"""The README's commands and examples work as written (the set-up and test commands are what
`.ci/run` executes; the render command and the Python examples run here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"<!-- readme: (\w+) -->\n```\w+\n(.*?)```", re.S)


def blocks(kind: str) -> list[str]:
    return [body for k, body in BLOCK.findall(README) if k == kind]


def test_ci_runs_exactly_the_readme_setup_and_test_commands():
    ci = [
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")
    ]
    setup = blocks("setup")[0].strip().splitlines()
    test = blocks("test")[0].strip().splitlines()
    assert len(setup) == 2 and len(test) == 1
    assert ci[-3:] == setup + test


def _venv_command(line: str) -> str:
    """README commands use `.venv/bin/`; run them with the interpreter running these tests."""
    return line.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")


@pytest.mark.slow
def test_readme_render_command(tmp_path):
    (cmd,) = blocks("run")[0].strip().splitlines()
    done = subprocess.run(
        _venv_command(cmd),
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # a normal render's output: the plan, the bar, the paths; no worker-shutdown warnings
    assert "WARNING" not in done.stderr and "still alive" not in done.stderr, done.stderr[-3000:]
    video = re.search(r"^video: (.+)$", done.stdout, re.M).group(1)
    assert (tmp_path / video).stat().st_size > 0
    assert re.search(r"^store: .+render\.zarr$", done.stdout, re.M)
    # the default render uses the trained toy and shows the prompt's content: a red object
    from pipelines.toy import COLOURS
    from storage import read_video
    from supergen_dask.metrics import count_objects

    counts = count_objects(read_video(tmp_path / video), COLOURS["red"])
    assert (counts >= 1).mean() >= 0.8, counts


def test_readme_python_examples_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for code in blocks("python"):
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README is ours
    assert (tmp_path / "renders" / "example" / "video.mp4").exists()
