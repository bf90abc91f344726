"""The toy's exact autoencoder, with and without frames grouped into channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipelines.toy.model import SpaceToDepthAutoencoder


@pytest.mark.parametrize("g", [1, 2, 4])
def test_encode_then_decode_is_exact(g):
    x = torch.rand(2, 3, 1 + 2 * g, 8, 12) * 2 - 1
    vae = SpaceToDepthAutoencoder(4, 3, scale_factor_temporal=g)
    z = vae.encode(x).latent_dist.mode()
    assert z.shape == (2, 48 * g, 3, 2, 3) and vae.config.z_dim == 48 * g
    torch.testing.assert_close(vae.decode(z).sample, x, atol=0, rtol=0)


def test_one_frame_per_latent_frame_keeps_the_shipped_layout():
    x = torch.rand(1, 3, 5, 8, 8)
    z = SpaceToDepthAutoencoder(4, 3).encode(x).latent_dist.mode()
    for f in range(5):
        assert torch.equal(z[:, :, f], F.pixel_unshuffle(x[:, :, f], 4))


def test_grouped_frames_put_the_first_frame_alone_and_in_time_order():
    x = torch.rand(1, 3, 9, 8, 8)
    z = SpaceToDepthAutoencoder(4, 3, scale_factor_temporal=4).encode(x).latent_dist.mode()
    first = F.pixel_unshuffle(x[:, :, 0], 4)
    for j in range(4):
        assert torch.equal(z[:, 48 * j : 48 * (j + 1), 0], first)
        assert torch.equal(z[:, 48 * j : 48 * (j + 1), 1], F.pixel_unshuffle(x[:, :, 1 + j], 4))
        assert torch.equal(z[:, 48 * j : 48 * (j + 1), 2], F.pixel_unshuffle(x[:, :, 5 + j], 4))


def test_frame_counts_off_the_grouping_are_refused():
    vae = SpaceToDepthAutoencoder(4, 3, scale_factor_temporal=4)
    with pytest.raises(ValueError, match="1 \\+ 4n frames"):
        vae.encode(torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="temporal factor"):
        SpaceToDepthAutoencoder(4, 3, z_dim=48, scale_factor_temporal=4)


def test_the_layout_survives_save_and_load(tmp_path):
    SpaceToDepthAutoencoder(4, 3, scale_factor_temporal=4).save_pretrained(tmp_path / "vae")
    vae = SpaceToDepthAutoencoder.from_pretrained(tmp_path / "vae")
    assert vae.config.scale_factor_temporal == 4 and vae.config.z_dim == 192
