"""DC-AE-V decoding for the runner: streamed along time, chunk by chunk, and tiled in space when large.

Along time, :class:`~megavg.models.dcaev.streaming.StreamingDecoder` runs one decoder chunk per call
with each conv's left context carried over (equal to one pass over the whole latent). In space, each
tile position gets its own streaming decoder, so every tile is streamed exactly like the untiled case
and the tiles of one chunk are blended as :mod:`megavg.models.dcaev.tiling` blends them.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from megavg.models.dcaev.streaming import StreamingDecoder
from megavg.models.dcaev.tiling import tiled_map


def _chunks(latents: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, latents.shape[2], size):
        yield latents[:, :, start : start + size]


@torch.no_grad()
def stream_decode_tiled(
    vae, latents: torch.Tensor, tile: int = 0, overlap: int = 0
) -> Iterator[torch.Tensor]:
    """Yield decoded video pieces [B, 3, n, H, W] for unscaled ``latents`` [B, c, T, h, w].

    ``tile`` > 0 and smaller than the latent frame: spatial tiles of ``tile`` latent pixels overlapping
    by ``overlap`` (default ``tile // 4``)."""
    h, w = latents.shape[-2:]
    if not tile or (h <= tile and w <= tile):
        stream = StreamingDecoder(vae)
        for chunk in _chunks(latents, vae.latent_chunk):
            yield from stream.push(chunk)
        yield from stream.flush()
        return
    streams: list[StreamingDecoder] = []

    def per_tile(calls: list[int], last: bool):
        def decode(piece: torch.Tensor) -> torch.Tensor:  # the i-th tile of this chunk -> its own stream
            i = calls[0]
            calls[0] += 1
            if i == len(streams):
                streams.append(StreamingDecoder(vae))
            (out,) = streams[i].push(piece) + (streams[i].flush() if last else [])
            return out

        return decode

    chunks = list(_chunks(latents, vae.latent_chunk))
    for n, chunk in enumerate(chunks):
        last = n == len(chunks) - 1 and chunk.shape[2] < vae.latent_chunk
        fn = per_tile([0], last)
        yield tiled_map(fn, chunk, tile, overlap or tile // 4, vae.spatial_compression, 1)


# ---- split decoding (multi-process generation) ---------------------------------------------------------
@torch.no_grad()
def context_chunks(vae, probe: int = 6, size: tuple[int, int] = (2, 2)) -> int | None:
    """How many preceding latent chunks a chunk's decoded output depends on (None: more than ``probe``).

    Measured, not assumed: the decoder streams a NaN chunk (so every carried left context becomes NaN,
    i.e. unknown) followed by ``probe`` clean chunks on a small frame; chunk k's output depends on the
    state from j chunks back only if NaN reaches it. NaN propagates through every arithmetic dependency
    (0 x NaN is NaN), so the count is an upper bound for any input."""
    param = next(vae.parameters())
    shape = (1, vae.args.latent_channels, vae.latent_chunk, *size)
    stream = StreamingDecoder(vae)
    stream.push(torch.full(shape, float("nan"), device=param.device, dtype=param.dtype))
    clean = torch.zeros(shape, device=param.device, dtype=param.dtype)
    for k in range(1, probe + 1):
        (out,) = stream.push(clean)
        if not out.isnan().any():
            return k - 1
    return None


def decode_chunk_range(vae, latents: torch.Tensor, start: int, stop: int, context: int | None, tile: int = 0):
    """Decoded pieces of latent chunks ``start:stop`` (one per chunk), equal to those of decoding the whole
    ``latents``: decoding starts ``context`` chunks earlier (None: at chunk 0) and drops those outputs."""
    first = 0 if context is None else max(0, start - context)
    size = vae.latent_chunk
    pieces = stream_decode_tiled(vae, latents[:, :, first * size : stop * size], tile)
    for n, piece in enumerate(pieces):
        if first + n >= start:
            yield piece
