"""The endless, shuffled raw-sample stream of one loader stream, resumable without re-reading the past.

Positions ``(shard, ordinal)`` run epoch after epoch over the shards in an order drawn from
``(seed, epoch)``. A buffer of ``bufsize`` samples shuffles them: each output draws one buffer slot and
refills it with the next sample. Which position comes out at output i depends only on the seed and the
shard sizes, so resuming at output n replays the draws on positions alone (no data read), then reads
just the samples left in the buffer and continues reading from the position reached.

webdataset reads the tars (``tarfile_samples``: grouping by key, error handler). A shard that yields
fewer samples than its size (truncated) gets stand-ins that fail decoding (counted, skipped); extra
samples are ignored, so positions never shift.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import random
import re
from collections.abc import Callable, Iterator

import av
import webdataset as wds
from safetensors import SafetensorError

from megavg.utils.errors import UserError
from megavg.utils.logging import get_logger

log = get_logger(__name__)

# What decoding one broken sample can raise (bad video or tensor bytes, bad json, a missing member, our
# own UserError/VideoError): such a sample is skipped and counted. Anything else (TypeError,
# AttributeError, ...) is a bug in megavg and propagates.
SAMPLE_ERRORS = (
    UserError,
    av.error.FFmpegError,
    SafetensorError,
    json.JSONDecodeError,
    UnicodeDecodeError,
    KeyError,
)


@dataclasses.dataclass
class StreamStats:
    """Counters of one sample stream (one process)."""

    skipped: int = 0
    shard_errors: int = 0
    samples_per_epoch: int | None = None
    warned: set = dataclasses.field(default_factory=set)

    def warn_once(self, what: str, message: str) -> None:
        """Log ``message`` the first time ``what`` is seen (a stream revisits shards every epoch)."""
        if what not in self.warned:
            self.warned.add(what)
            log.warning(message)


def shard_error_handler(stats: StreamStats) -> Callable[[Exception], bool]:
    """webdataset handler for unreadable tar data: count, warn once per shard, go on."""

    def handler(exn: Exception) -> bool:
        stats.shard_errors += 1
        # webdataset appends the url to the args, or (inside a tar) " @ <stream repr>" to the message
        message = str(exn.args[0]) if exn.args else repr(exn)
        reason, _, stream = message.partition(" @ ")
        named = re.search(r"name='([^']+)'", stream)
        shard = next((a for a in exn.args[1:] if isinstance(a, str)), named[1] if named else "?")
        stats.warn_once(f"shard:{shard}", f"skipping unreadable data in shard {shard}: {reason}")
        return True

    return handler


class ShardCursor:
    """Walks the endless positions (shard, ordinal): epochs of all shards in a seeded order."""

    def __init__(self, sizes: list[int], seed: str):
        if sum(sizes) == 0:
            raise UserError(f"no sample in {len(sizes)} shard(s)")
        self.sizes, self.seed = sizes, seed
        self.epoch, self.slot, self.ordinal = 0, 0, 0
        self.order = self._order(0)

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.sizes)))
        random.Random(f"{self.seed}/epoch{epoch}").shuffle(order)
        return order

    def _settle(self) -> None:
        """Move past finished (or empty) shards so that the cursor points at a real position."""
        while self.ordinal >= self.sizes[self.order[self.slot]]:
            self.slot, self.ordinal = self.slot + 1, 0
            if self.slot == len(self.order):
                self.epoch, self.slot = self.epoch + 1, 0
                self.order = self._order(self.epoch)

    def next(self) -> tuple[int, int]:
        """The next position."""
        self._settle()
        self.ordinal += 1
        return self.order[self.slot], self.ordinal - 1

    def visits(self) -> Iterator[tuple[int, int]]:
        """From here on, (shard, first ordinal) of each shard visit; the cursor advances along."""
        while True:
            self._settle()
            shard, first = self.order[self.slot], self.ordinal
            self.ordinal = self.sizes[shard]
            yield shard, first


def read_shard(url: str, size: int, handler: Callable, first: int = 0) -> Iterator[tuple[int, dict]]:
    """(ordinal, sample) for ordinals ``first..size-1`` of one shard; missing ones become stand-ins."""
    samples = itertools.islice(wds.tarfile_samples([{"url": url}], handler=handler), size)  # extras ignored
    count = 0
    for count, sample in enumerate(samples, start=1):
        if count > first:
            yield count - 1, sample
    for missing in range(max(first, count), size):
        yield missing, {"__key__": f"#{missing}", "__url__": url, "__error__": "missing (shard cut short)"}


def shuffled_samples(
    urls: list[str], sizes: list[int], seed: str, bufsize: int, skip: int, stats: StreamStats
) -> Iterator[dict]:
    """Endless shuffled raw samples of ``urls`` (``sizes`` samples each), starting at output ``skip``."""
    stats.samples_per_epoch = sum(sizes)
    handler = shard_error_handler(stats)
    cursor, rng = ShardCursor(sizes, seed), random.Random(f"{seed}/shuffle")
    buffer = [cursor.next() for _ in range(bufsize)]
    for _ in range(skip):  # replay the draws of outputs 0..skip-1 on positions only
        buffer[rng.randrange(bufsize)] = cursor.next()
    wanted = collections.defaultdict(set)
    for shard, ordinal in buffer:
        wanted[shard].add(ordinal)
    fetched = {
        (shard, ordinal): sample
        for shard, ordinals in wanted.items()
        for ordinal, sample in read_shard(urls[shard], max(ordinals) + 1, handler)
        if ordinal in ordinals
    }
    buffer = [fetched[position] for position in buffer]
    for shard, first in cursor.visits():
        for _, sample in read_shard(urls[shard], sizes[shard], handler, first):
            slot = rng.randrange(bufsize)
            yield buffer[slot]
            buffer[slot] = sample
