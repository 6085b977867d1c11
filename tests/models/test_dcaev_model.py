"""DC-AE-V model: presets, chunk-causality, lengths, streaming = full pass, save/load, tiling."""

from __future__ import annotations

import pytest
import torch

import megavg.models as mm
from megavg.models.dcaev import Args, Model
from megavg.models.dcaev.streaming import StreamingDecoder, StreamingEncoder, stream_decode, stream_encode
from megavg.models.dcaev.tiling import tiled_decode, tiled_encode
from megavg.utils.errors import UserError

RELEASED = {  # name: (spatial, temporal, latent channels, scaling factor)
    "dc-ae-v-f32t4c32": (32, 4, 32, 0.7241),
    "dc-ae-v-f32t4c64": (32, 4, 64, 0.7614),
    "dc-ae-v-f32t4c128": (32, 4, 128, 0.4457),
    "dc-ae-v-f32t4c256": (32, 4, 256, 0.4752),
    "dc-ae-v-f64t4c128": (64, 4, 128, 0.4752),
}


def _randomize(model: Model) -> Model:
    """Non-trivial norm weights/biases so that a mix-up of parameters shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> Model:
    torch.manual_seed(1)
    return _randomize(mm.build("dc-ae-v-tiny"))


def video(T: int, H: int = 16, W: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, T, H, W, generator=g) * 2 - 1


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_presets_build_on_meta(name):
    spatial, temporal, channels, scale = RELEASED[name]
    with torch.device("meta"):
        model = mm.build(name)
    assert (model.spatial_compression, model.temporal_compression) == (spatial, temporal)
    assert model.args.latent_channels == channels and model.args.scaling_factor == scale
    assert (model.frame_chunk, model.latent_chunk) == (40, 10)
    x = torch.empty(1, 3, 80, 2 * spatial, 2 * spatial, device="meta")
    assert model.encode(x).shape == (1, channels, 20, 2, 2)
    assert model.decode(torch.empty(1, channels, 20, 2, 2, device="meta")).shape == x.shape


def test_f32t4c32_parameter_count():
    with torch.device("meta"):
        model = mm.build("dc-ae-v-f32t4c32")
    assert sum(p.numel() for p in model.parameters()) == 2_138_635_436  # the authors' "about 2.1 B"
    assert 3 * 32**2 * 4 // model.args.latent_channels == 384  # compression ratio as the authors quote it


def test_encoder_chunk_causality(tiny):
    x = video(24)  # 3 chunks of 8 frames -> 3 latent chunks of 2
    z = tiny.encode(x)
    later = x.clone()
    later[:, :, 16:] = video(8, seed=5)
    assert torch.equal(tiny.encode(later)[:, :, :4], z[:, :, :4])  # chunks 0, 1 untouched
    inside = x.clone()
    inside[:, :, 7] = 0.5  # last frame of chunk 0 (latent frame 1)
    changed = (tiny.encode(inside) - z).abs().amax(dim=(0, 1, 3, 4))
    assert changed[0] > 1e-4 and changed[1] > 1e-4  # earlier frames of the same chunk see it
    assert changed[2:].max() > 1e-4  # ... and later chunks too (left context flows forwards)


def test_decoder_and_forward_chunk_causality(tiny):
    z = torch.randn(1, 4, 6, 4, 4)
    y = tiny.decode(z)
    later = z.clone()
    later[:, :, 5] += 1.0
    assert torch.equal(tiny.decode(later)[:, :, :16], y[:, :, :16])
    inside = z.clone()
    inside[:, :, 3] += 1.0  # second latent of chunk 1 -> first frames of chunk 1 change
    assert (tiny.decode(inside) - y)[:, :, 8:12].abs().max() > 1e-4
    x = video(24)
    x2 = x.clone()
    x2[:, :, 20] = 0.0
    assert torch.equal(tiny(x2)[:, :, :16], tiny(x)[:, :, :16])


@pytest.mark.parametrize("T", [5, 13, 30])
def test_any_length_is_causal_and_trimmed(tiny, T):
    x = video(T, 15, 18)
    y = tiny(x)
    assert y.shape == x.shape
    longer = torch.cat([x, video(8, 15, 18, seed=3)], dim=2)
    cut = (T // 8) * 8  # whole chunks of the short clip are unaffected by frames added after it
    assert torch.allclose(tiny(longer)[:, :, :cut], y[:, :, :cut], atol=1e-6, rtol=0)


def _pieces(x: torch.Tensor, sizes: list[int]):
    start = 0
    for n in sizes:
        yield x[:, :, start : start + n]
        start += n


@pytest.mark.parametrize("T,sizes", [(24, [8, 8, 8]), (30, [3, 7, 1, 12, 7]), (21, [21])])
def test_streaming_encode_equals_full_pass(tiny, T, sizes):
    x = video(T)
    streamed = torch.cat(list(stream_encode(tiny, _pieces(x, sizes))), dim=2)
    torch.testing.assert_close(streamed, tiny.encode(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("T,sizes", [(6, [2, 2, 2]), (7, [1, 4, 2]), (9, [5, 4])])
def test_streaming_decode_equals_full_pass(tiny, T, sizes):
    z = torch.randn(1, 4, T, 4, 4)
    streamed = torch.cat(list(stream_decode(tiny, _pieces(z, sizes))), dim=2)
    torch.testing.assert_close(streamed, tiny.decode(z), atol=1e-5, rtol=0)


def test_streaming_yields_each_chunk_as_soon_as_complete(tiny):
    enc = StreamingEncoder(tiny)
    assert enc.push(video(5)) == []
    out = enc.push(video(12))  # 17 frames buffered -> two chunks of 8 done, 1 frame pending
    assert [o.shape[2] for o in out] == [2, 2]
    dec = StreamingDecoder(tiny)
    assert [o.shape[2] for o in dec.push(torch.randn(1, 4, 3, 4, 4))] == [8]
    assert [o.shape[2] for o in dec.flush()] == [4]


def test_save_load_round_trip(tiny, tmp_path):
    tiny.save(tmp_path / "m")
    again = mm.load(tmp_path / "m")
    assert again.args == tiny.args
    x = video(16)
    assert torch.equal(again(x), tiny(x))


def test_deterministic(tiny):
    x = video(16)
    assert torch.equal(tiny(x), tiny(x))
    torch.manual_seed(3)
    a = mm.build("dc-ae-v-tiny")
    torch.manual_seed(3)
    b = mm.build("dc-ae-v-tiny")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().mean() / b.abs().mean()).item()


@torch.no_grad()
def test_tiling_exact_for_one_tile_and_bounded_otherwise(tiny):
    x = video(8, 64, 64)
    z, y = tiny.encode(x), tiny.decode(tiny.encode(x))
    torch.testing.assert_close(tiled_encode(tiny, x, tile=64, overlap=8), z)  # one tile: exact
    torch.testing.assert_close(tiled_decode(tiny, z, tile=16, overlap=2), y)
    # A random-weight net has a receptive field as large as the frame, so tiles differ at their edges;
    # stated bound (measured 0.13 / 0.12): mean |tiled - untiled| <= 0.2 of mean |untiled| for 40px
    # (10-latent) tiles with 16px (4-latent) overlap on 64x64, and more overlap never hurts here.
    assert _relative(tiled_encode(tiny, x, tile=40, overlap=16), z) < 0.2
    assert _relative(tiled_decode(tiny, z, tile=10, overlap=4), y) < 0.2
    assert _relative(tiled_encode(tiny, x, 32, 16), z) < _relative(tiled_encode(tiny, x, 32, 8), z)


def test_bad_config_names_the_key():
    bad = {"family": "dcaev", "args": {"encoder": {"block_type": "ResBlock3d@3@3"}}}
    with pytest.raises(UserError, match="encoder.block_type"):
        mm.build(bad)
    with pytest.raises(UserError, match="decoder expands"):
        Model(Args(decoder=mm.preset_args("dc-ae-v-small").decoder))


def test_encode_image_fills_one_latent_frame(tiny):
    image = video(1)[:, :, 0]
    z = tiny.encode_image(image)
    assert z.shape == (1, 4, 1, 4, 4)
    torch.testing.assert_close(z, tiny.encode(image.unsqueeze(2).repeat(1, 1, 4, 1, 1)))
