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
