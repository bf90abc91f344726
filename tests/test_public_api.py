"""The packages' public names, imported on first use, are the objects their modules define,
whatever was imported before (a submodule named like a public name must not shadow it)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import pytest


@pytest.mark.parametrize("package", ["supergen_dask", "storage"])
def test_every_public_name_is_its_object_after_every_submodule_is_imported(package):
    pkg = importlib.import_module(package)
    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{mod.name}")
    for name in pkg.__all__:
        value = getattr(pkg, name)
        assert not isinstance(value, types.ModuleType), f"{package}.{name} is a module"
        assert name in dir(pkg)
    with pytest.raises(AttributeError, match="no_such_name"):
        pkg.no_such_name  # noqa: B018


def test_importing_the_package_leaves_the_heavy_libraries_for_later():
    code = (
        "import sys, supergen_dask, storage; "
        "print(sorted(m for m in ('torch', 'zarr', 'xarray', 'distributed', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
