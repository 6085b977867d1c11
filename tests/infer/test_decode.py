"""Runner decoding: streamed chunk by chunk equals one decoder pass; streamed per tile equals the tiled
decode of the whole clip (blending is per pixel and the same for every frame)."""

import pytest
import torch

import megavg.models
from megavg.infer.decode import stream_decode_tiled
from megavg.models.dcaev.tiling import tiled_decode


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return megavg.models.build("dc-ae-v-tiny").eval()


@pytest.mark.parametrize("frames", [5, 4])  # latent chunk is 2: a trailing partial chunk, and none
def test_streamed_equals_whole_pass(vae, frames):
    z = torch.randn(1, 4, frames, 6, 7)
    pieces = list(stream_decode_tiled(vae, z))
    assert len(pieces) == -(-frames // vae.latent_chunk)  # one piece per chunk, as they complete
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(pieces, dim=2), vae.decode(z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frames", [5, 4])
def test_streamed_tiles_equal_tiled_decode(vae, frames):
    z = torch.randn(1, 4, frames, 10, 13)
    got = torch.cat(list(stream_decode_tiled(vae, z, tile=6, overlap=2)), dim=2)
    with torch.no_grad():
        expected = tiled_decode(vae, z, tile=6, overlap=2)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert (got - vae.decode(z)).abs().max() > 1e-4  # tiles really were used
