"""The family registry: detection from ``model_index.json``, refusals before any weights load,
per-family defaults in one place and shown by ``supergen models``."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines import UnknownModelError, families, load_backend, model_info
from pipelines.wan import save_tiny_pipeline
from supergen_dask.cli import main


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-wan")


def _copy(src, tmp_path):
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_every_family_module_is_registered_with_its_defaults():
    fams = families()
    assert "wan" in fams
    for name, d in fams.items():
        assert d.family == name and d.pipelines and "transformer" in d.components
        assert d.native_height % 8 == 0 and d.native_width % 8 == 0 and d.default_steps > 0
        assert 0 < d.default_refine_fraction <= 1


def test_a_directory_without_model_index_is_refused(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(UnknownModelError, match="no model_index.json"):
        model_info(str(tmp_path / "weights"))


def test_a_missing_component_is_named(tmp_path, wan_dir):
    d = _copy(wan_dir, tmp_path)
    shutil.rmtree(d / "vae")
    with pytest.raises(UnknownModelError, match="'vae'"):
        model_info(str(d))
    index = json.loads((d / "model_index.json").read_text())
    index["vae"] = [None, None]
    (d / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnknownModelError, match="no 'vae' component"):
        load_backend(str(d))


def test_pickle_only_weights_are_refused_before_loading(tmp_path, wan_dir):
    d = _copy(wan_dir, tmp_path)
    weights = d / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.rename(d / "transformer" / "diffusion_pytorch_model.bin")
    with pytest.raises(UnknownModelError, match=r"only pickle weights.*safetensors") as err:
        load_backend(str(d))
    assert str(d) in str(err.value) and "'transformer'" in str(err.value)


def test_models_command_lists_family_defaults(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, d in families().items():
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{name}: "))
        assert f"native {d.native_width}x{d.native_height}" in line and f"{d.default_steps} steps" in line
        assert f"frames {d.frame_rule()}" in line
