"""Decode regions checked against a whole decode, beside diffusers' own tiled decode, on a tiny
random-weight ``AutoencoderKLWan`` (the real architecture, built in code)."""

from __future__ import annotations

import dask.config
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.blend import blend_regions, blend_regions_uint8, blend_weights
from supergen_dask import config
from supergen_dask.decode_check import compare_decodes
from supergen_dask.plan import decode_regions

TINY = dict(
    base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]
)


@pytest.fixture(scope="module")
def measured():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY).eval()
    z = torch.randn(1, 16, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    margin, blend = int(config.get("decode.margin")), config.get("decode.blend")
    # cores as large as diffusers' stride (12 latent cells); its tiles overlap by 4 cells
    return compare_decodes(vae, z, (12, 12), [(margin, blend), (4, None)], tile_px=128, stride_px=96)


def test_default_region_decode_no_further_from_whole_than_diffusers_tiled(measured):
    tiled, ours = measured["tiled"], measured["regions"][0]
    assert tiled["max"] > 0  # the tiled decode is a real approximation here
    assert ours["max"] <= tiled["max"], measured
    assert ours["mean"] <= tiled["mean"], measured


def test_default_beats_the_old_four_cell_linear_fade(measured):
    new, old = measured["regions"]
    assert new["mean"] < old["mean"], measured
    assert new["max"] < old["max"], measured


@pytest.mark.parametrize("margin,blend", [(4, None), (4, 4), (8, 8), (8, 2), (3, 100)])
def test_blend_weights_sum_to_one(margin, blend):
    # whole cores, so every boundary has the same context on both sides (elsewhere the blend on
    # read divides by the sum)
    regions = decode_regions(24, 32, 8, 8, margin)
    total = np.zeros((24 * 2, 32 * 2))
    for reg in regions:
        wy, wx = blend_weights(reg, 2, 24, 32, blend)
        y0, x0, wh, ww = (v * 2 for v in reg.window)
        total[y0 : y0 + wh, x0 : x0 + ww] += wy[:, None] * wx[None, :]
        assert np.all(wy[: 2 * (reg.core[0] - reg.window[0])] < 1)  # context rows never own a pixel
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_blend_of_one_image_cut_into_regions_is_the_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(2, 40, 54, 3)).astype(np.float32)
    regions = decode_regions(20, 27, 8, 8, 4)
    pieces = []
    for reg in regions:
        wy, wx, wh, ww = (v * 2 for v in reg.window)
        pieces.append((reg, image[:, wy : wy + wh, wx : wx + ww]))
    np.testing.assert_allclose(blend_regions(pieces, 2, 20, 27, 4), image, atol=1e-3)


def _cut(video: np.ndarray, regions, scale: int) -> list:
    pieces = []
    for reg in regions:
        wy, wx, wh, ww = (v * scale for v in reg.window)
        pieces.append((reg, video[:, wy : wy + wh, wx : wx + ww]))
    return pieces


@settings(max_examples=60, deadline=None)
@given(
    valid=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    core=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    margin=st.integers(0, 5),
    blend=st.none() | st.integers(1, 12),
    scale=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_uint8_blend_is_the_float_blend_rounded(valid, core, margin, blend, scale, seed):
    # mp4 segments and the quality record read frames through the uint8 blend: it must give the
    # bytes the float blend rounds to, whatever the grid, margins, cross-fade and scale; windows
    # decoded separately disagree where they overlap, so every window gets its own pixels
    (h, w), regions = valid, decode_regions(*valid, *core, margin)
    rng = np.random.default_rng(seed)
    pieces = [
        (reg, rng.integers(0, 256, (2, reg.window[2] * scale, reg.window[3] * scale, 3), dtype=np.uint8))
        for reg in regions
    ]
    rounded = np.clip(np.rint(blend_regions(pieces, scale, h, w, blend)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(blend_regions_uint8(pieces, scale, h, w, blend), rounded)


def test_uint8_blend_refuses_gaps_and_other_types():
    image = np.random.default_rng(0).integers(0, 256, size=(1, 40, 54, 3), dtype=np.uint8)
    regions = decode_regions(20, 27, 8, 8, 4)
    with pytest.raises(ValueError, match="do not cover"):
        blend_regions_uint8(_cut(image, regions[1:], 2), 2, 20, 27, 4)
    with pytest.raises(TypeError, match="uint8"):
        blend_regions_uint8(_cut(image.astype(np.float32), regions, 2), 2, 20, 27, 4)
    np.testing.assert_array_equal(blend_regions_uint8(_cut(image, regions, 2), 2, 20, 27, 4), image)


def test_bad_blend_setting_is_one_line_error():
    from supergen_dask.plan import decode_blend
    from supergen_dask.spec import SpecError

    with dask.config.set({"supergen.decode.blend": 0}):
        with pytest.raises(SpecError, match="decode.blend"):
            decode_blend()
