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


# Fewer denoising steps than the notebooks' own (the sizes they assert stay), injected after
# each "Parameters" cell as papermill does. Step 4 and the last are then the kept steps
# (retention keeps every 5th), so each notebook still shows an intermediate step that exists.
INJECTED = {
    "submit_batch": "num_inference_steps, refine_steps = 6, 2",
    "inspect_latents": "num_inference_steps, refine_steps = 6, 2",
}


def _inject(nb, source: str) -> None:
    (i,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert nb.cells[i].source.startswith("# Parameters")
    names = {line.split("=")[0].strip() for line in source.splitlines()}
    assert names <= {line.split("=")[0].strip() for line in nb.cells[i].source.splitlines()}, names
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    if path.stem in INJECTED:
        _inject(nb, INJECTED[path.stem])
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
        assert result["preview_shape"] == [9, 128, 192, 3] and result["preview_step_kept"]
        assert all(done == total for done, total in result["tiles"])
    elif path.stem == "inspect_latents":
        assert result["all_done"] and result["sketch_video"]
        assert result["preview_shape"][1:] == [128, 192, 3]


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"submit_batch", "inspect_latents"}
