"""The tile task's copies between host and device (``supergen_dask.transfer``) and the arrays a
stepped tile hands to the store (``tasks._host_outputs`` / ``tasks._landed``): the same bytes as
a plain conversion, and values the store cannot hold stop the tile before anything is written.
On a CPU the copies are plain conversions; their not waiting for a card is tested on GPUs
(``tests/gpu``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny_spec

from supergen_dask import tasks, transfer
from supergen_dask.geometry import TileKey
from supergen_dask.plan import plan_render
from supergen_dask.stepping import NonFiniteError, RegionStep


def test_to_device_casts_after_the_copy_and_keeps_a_dtype_when_asked():
    half = np.arange(24, dtype=np.float16).reshape(2, 3, 4) / 7
    up = transfer.to_device(half, "cpu")
    assert up.dtype == torch.float32
    np.testing.assert_array_equal(up.numpy(), half.astype(np.float32))
    t = torch.tensor(981, dtype=torch.int64)
    assert transfer.to_device(t, "cpu", dtype=None).dtype == torch.int64


def test_host_copy_gives_arrays_and_checks_as_numpy():
    x = torch.randn(3, 4).permute(1, 0)  # not contiguous
    arrays, checks = transfer.HostCopy({"x": x}, {"ok": torch.isfinite(x).all()}).wait()
    np.testing.assert_array_equal(arrays["x"], x.numpy())
    assert arrays["x"].flags.c_contiguous and bool(checks["ok"])


def _stepped(store_dtype: str):
    """A refinement tile key of the tiny render, its latents and UniPC history as a step leaves
    them (model layout), and the plan, storing ``store_dtype``."""
    spec = tiny_spec()
    spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, store_dtype=store_dtype))
    plan = plan_render(spec)
    st = plan.refine
    key = TileKey("refine", st.first + 1, 0, 1)
    g = st.grid
    gen = torch.Generator().manual_seed(0)
    shape = (1, st.channels, st.latent_frames, g.tile_h, g.tile_w)
    region = RegionStep(plan.scheduler, st.first, key.step)
    new = torch.randn(shape, generator=gen)
    state = {
        name: {s: torch.randn(shape, generator=gen) * 3 for s in slots}
        for name, slots in region.present().items()
    }
    return plan, key, new, state


@pytest.mark.parametrize("store_dtype", ["float32", "float16"])
def test_a_stepped_tile_lands_as_the_store_layout_of_each_array(store_dtype):
    plan, key, new, state = _stepped(store_dtype)
    chunks = {"cache": torch.stack([new, new * 2, new * 3])}
    out = tasks._landed(plan, key, tasks._host_outputs(plan, key, new, state, chunks))
    assert list(out)[-1] == "latents"  # written last of the tile's arrays

    def stored(x):  # the store's layout and dtype, converted by NumPy
        return x[0].permute(1, 0, 2, 3).numpy().astype(store_dtype)

    np.testing.assert_array_equal(out["latents"], stored(new))
    np.testing.assert_array_equal(tasks._to_store(new, store_dtype), stored(new))
    assert out["latents"].dtype == np.dtype(store_dtype)
    np.testing.assert_array_equal(out["cache"], chunks["cache"][:, 0].permute(0, 2, 1, 3, 4).numpy())
    for name, slots in state.items():
        arr = out[f"state_{name}"]
        assert arr.shape[0] == plan.state_slots[name] and arr.dtype == np.dtype(store_dtype)
        for s in range(arr.shape[0]):
            if s in slots:
                np.testing.assert_array_equal(arr[s], stored(slots[s]))
            else:
                assert np.isnan(arr[s]).all()


def test_values_the_store_cannot_hold_stop_the_tile():
    plan, key, new, state = _stepped("float16")
    bad = new.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(
        NonFiniteError, match=r"non-finite latents \(NaN or inf\) from refine step \d+ tile \(0, 1\)"
    ):
        tasks._landed(plan, key, tasks._host_outputs(plan, key, bad, state))
    big = new * 1e5
    with pytest.raises(NonFiniteError, match="non-finite latents in float16 storage"):
        tasks._landed(plan, key, tasks._host_outputs(plan, key, big, state))
    name = next(iter(state))
    history = {**state, name: {s: v * 1e5 for s, v in state[name].items()}}
    with pytest.raises(NonFiniteError, match="scheduler history beyond float16's range"):
        tasks._landed(plan, key, tasks._host_outputs(plan, key, new, history))
    with pytest.raises(NonFiniteError, match="beyond float16's range"):  # a stage input, likewise
        tasks._to_store(big, "float16")
    # the same values stored as float32 are fine
    plan32, *_ = _stepped("float32")
    tasks._landed(plan32, key, tasks._host_outputs(plan32, key, big, history))
