"""The notebooks run top to bottom in a fresh kernel, and what they show is checked."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.slow


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _result(nb) -> dict:
    """The JSON a notebook's last cell prints after ``RESULT``."""
    for o in _outputs(nb):
        for line in o.get("text", "").splitlines() if o.output_type == "stream" else []:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])
    raise AssertionError("the notebook printed no RESULT line")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for o in _outputs(nb) if o.output_type == "error"]
    assert not errors
    # each notebook shows a decoded intermediate step as a picture
    pictures = [o for o in _outputs(nb) if "image/png" in o.get("data", {})]
    assert len(pictures) == 1
    result = _result(nb)
    if path.stem == "submit_batch":
        assert result["statuses"] == ["finished"] * 3
        assert all((tmp_path / v).exists() and (tmp_path / v).stat().st_size > 0 for v in result["videos"])
        assert result["preview_shape"] == [9, 128, 192, 3]
        assert all(done == total for done, total in result["tiles"])
    elif path.stem == "inspect_latents":
        assert result["all_done"] and result["sketch_video"]
        assert result["preview_shape"][1:] == [128, 192, 3]


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"submit_batch", "inspect_latents"}
