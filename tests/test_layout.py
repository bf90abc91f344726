"""One direction of imports: supergen_dask uses pipelines and storage; those never import
supergen_dask or each other; dask_cuda is imported only inside the GPU path."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize(
    "package, forbidden",
    [("pipelines", {"supergen_dask", "storage"}), ("storage", {"supergen_dask", "pipelines"})],
)
def test_lower_packages_do_not_import_upwards_or_sideways(package, forbidden):
    for path in (ROOT / package).rglob("*.py"):
        assert not imported_roots(path) & forbidden, (
            f"{path.relative_to(ROOT)} imports {imported_roots(path) & forbidden}"
        )


def test_dask_cuda_only_on_the_gpu_path():
    for path in (ROOT / "supergen_dask").rglob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = {n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)}
        for node in top_level:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.startswith("dask_cuda") for n in names), (
                f"{path.name} imports dask_cuda at import time"
            )
