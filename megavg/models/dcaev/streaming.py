"""Streaming DC-AE-V encode/decode: chunk by chunk with each conv's left context carried over.

Frames (or latents) arrive in pieces of any length. They are buffered until one whole *model chunk* is
there (``model.frame_chunk`` frames, ``model.latent_chunk`` latents: a length at which every chunk-causal
conv ends a chunk), that chunk runs through the network, and its output is returned at once. Every conv
keeps the last ``p`` frames of its input as the left pad of the next call, so the concatenated output
equals one pass over the whole clip; the trailing partial chunk runs on ``flush()``. Memory depends on
the chunk, not on the clip length.

    enc = StreamingEncoder(model)
    for frames in reader:                # B,3,n,H,W pieces
        for z in enc.push(frames): ...
    for z in enc.flush(): ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from megavg.models.dcaev.model import Model, chunk_convs


class _CarryLeft:
    """Left context for one conv: returns the previous call's tail, keeps this call's tail."""

    def __init__(self) -> None:
        self.tail: torch.Tensor | None = None

    def __call__(self, tail: torch.Tensor) -> torch.Tensor | None:
        previous, self.tail = self.tail, tail.detach().clone()
        return previous


class _Stream:
    """Shared machinery: buffer along time, run whole chunks with carried left context."""

    def __init__(self, network: nn.Module, chunk: int, prepare=lambda x: x):
        self.network, self.chunk, self.prepare = network, chunk, prepare
        self.convs = chunk_convs(network)
        self.carries = [_CarryLeft() for _ in self.convs]
        self.pending: torch.Tensor | None = None

    @contextlib.contextmanager
    def _carried(self):
        saved = [conv.left_context for conv in self.convs]
        for conv, carry in zip(self.convs, self.carries):
            conv.left_context = carry
        try:
            yield
        finally:
            for conv, previous in zip(self.convs, saved):
                conv.left_context = previous

    def _run(self, piece: torch.Tensor) -> torch.Tensor:
        with self._carried():
            return self.network(self.prepare(piece))

    def push(self, piece: torch.Tensor) -> list[torch.Tensor]:
        """Add frames along dim 2; return the outputs of every chunk completed by them (maybe none)."""
        self.pending = piece if self.pending is None else torch.cat([self.pending, piece], dim=2)
        outputs = []
        while self.pending.shape[2] >= self.chunk:
            head, self.pending = self.pending[:, :, : self.chunk], self.pending[:, :, self.chunk :]
            outputs.append(self._run(head))
        return outputs

    def flush(self) -> list[torch.Tensor]:
        """Run the trailing partial chunk (if any) and end the stream."""
        rest, self.pending = self.pending, None
        outputs = [self._run(rest)] if rest is not None and rest.shape[2] else []
        self.carries = [_CarryLeft() for _ in self.convs]
        return outputs


class StreamingEncoder(_Stream):
    """Chunk-by-chunk ``model.encode``: concatenated outputs equal ``model.encode(whole clip)``."""

    def __init__(self, model: Model):
        super().__init__(model.encoder, model.frame_chunk, model.pad_input)


class StreamingDecoder(_Stream):
    """Chunk-by-chunk ``model.decode``: concatenated outputs equal ``model.decode(whole latent)``."""

    def __init__(self, model: Model):
        super().__init__(model.decoder, model.latent_chunk)


def _drive(stream: _Stream, pieces: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    for piece in pieces:
        yield from stream.push(piece)
    yield from stream.flush()


def stream_encode(model: Model, frames: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Yield latent chunks as soon as each is complete, for frames arriving in pieces (B,3,n,H,W)."""
    return _drive(StreamingEncoder(model), frames)


def stream_decode(model: Model, latents: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Yield video chunks as soon as each is complete, for latents arriving in pieces (B,c,n,h,w)."""
    return _drive(StreamingDecoder(model), latents)
