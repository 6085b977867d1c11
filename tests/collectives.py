"""Record every rank's collective calls and check the rule NCCL relies on: every rank of a group issues the
same collectives, in the same order, with the same sizes.

NCCL matches collectives by their order on a communicator, not by name: when rank 0 runs an all-gather
while rank 1 runs an all-reduce of another size, the ranks hang or exchange the wrong bytes ("NCCL
operations have to be called in the same order on all ranks", NCCL docs, "Collective operations"; torch
only checks it under ``TORCH_DISTRIBUTED_DEBUG=DETAIL``). gloo on one CPU machine is no stricter, so a
per-rank decision (a free-memory reading, a failed file read, a signal seen by one rank) can change one
rank's sequence without any CPU test noticing. Under :func:`recording`

- every ``torch.distributed`` collective and point-to-point call (the module attribute and its
  ``distributed_c10d`` original, so DeepSpeed's ``deepspeed.comm`` -- which calls ``torch.distributed``
  and caches ``all_gather_into_tensor`` / ``reduce_scatter_tensor`` when its backend starts -- goes through
  it too, as long as recording starts before ``deepspeed.init_distributed``) appends one JSON line
  ``{"op", "group" (global ranks), "tensors" ([shape, dtype] of each tensor argument), "args"}`` to
  ``<dir>/rank<R>.jsonl``, flushed at once (a hung run still leaves its record);
- calls made inside another recorded call (``all_gather_object`` gathers sizes, then buffers) are not
  recorded again;
- ``init_process_group`` gets ``timeout`` (default 60 s): a run whose ranks diverge fails instead of
  hanging for gloo's 30 minutes.

:func:`assert_same_collectives` then reads the records: for every group, each member's sequence of calls
on that group must be identical; every ``send`` must have a ``recv`` of the same shape at its peer, in
order. Workers start recording with ``python tests/distributed/recorded.py (-m MODULE | SCRIPT) ARGS``
under torchrun, with ``MEGAVG_TEST_COLLECTIVES=<dir>`` set (see that file for the per-rank faults).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import threading
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

ENV = "MEGAVG_TEST_COLLECTIVES"
TIMEOUT_ENV = "MEGAVG_TEST_PG_TIMEOUT"
COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "reduce_scatter",
    "reduce_scatter_tensor", "broadcast", "broadcast_object_list", "reduce", "gather", "gather_object",
    "scatter", "scatter_object_list", "all_to_all", "all_to_all_single", "barrier", "monitored_barrier",
    "new_group",
)  # fmt: skip
POINT_TO_POINT = ("send", "recv", "isend", "irecv")
_inside = threading.local()


def _tensors(value) -> list:
    if isinstance(value, torch.Tensor):
        return [[list(value.shape), str(value.dtype).removeprefix("torch.")]]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _group_ranks(op: str, args: tuple, kwargs: dict) -> list[int]:
    if op == "new_group":  # collective over the whole world, whatever ranks the new group gets
        return list(range(dist.get_world_size()))
    group = kwargs.get("group")
    if group is None:
        group = next((a for a in args if isinstance(a, dist.ProcessGroup)), None)
    if group is None or group is dist.group.WORLD:
        return list(range(dist.get_world_size()))
    return dist.get_process_group_ranks(group)


def _record(path: Path, op: str, args: tuple, kwargs: dict) -> None:
    entry = {"op": op, "group": _group_ranks(op, args, kwargs)}
    entry["tensors"] = [t for a in (*args, *kwargs.values()) for t in _tensors(a)]
    extra = {k: str(v) for k, v in kwargs.items() if k in ("op", "src", "dst", "ranks")}
    if op in POINT_TO_POINT:  # the peer: second positional argument when not a keyword
        peer = "dst" if op in ("send", "isend") else "src"
        extra.setdefault(peer, str(kwargs.get(peer, args[1] if len(args) > 1 else None)))
    if op == "new_group":
        extra["ranks"] = str(list(kwargs.get("ranks", args[0] if args else None) or []))
    if op in ("all_reduce", "reduce") and "op" not in extra:
        extra["op"] = str(args[1]) if len(args) > 1 else "RedOpType.SUM"
    if op in ("broadcast", "broadcast_object_list") and "src" not in extra and len(args) > 1:
        extra["src"] = str(args[1])
    entry["args"] = extra
    with open(path, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def _recorded(op: str, function, out: Path):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if getattr(_inside, "depth", 0) == 0 and dist.is_initialized():
            _record(out / f"rank{dist.get_rank()}.jsonl", op, args, kwargs)
        _inside.depth = getattr(_inside, "depth", 0) + 1
        try:
            return function(*args, **kwargs)
        finally:
            _inside.depth -= 1

    return wrapper


def _with_timeout(function, seconds: float):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        kwargs.setdefault("timeout", datetime.timedelta(seconds=seconds))
        return function(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def recording(out: str | os.PathLike, timeout_s: float = 60.0):
    """Record every rank's collectives into ``out/rank<R>.jsonl`` while inside (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    modules = (dist, c10d)
    saved = [(m, name, getattr(m, name)) for m in modules for name in (*COLLECTIVES, *POINT_TO_POINT)
             if hasattr(m, name)]  # fmt: skip
    saved += [(m, "init_process_group", m.init_process_group) for m in modules]
    try:
        for module, name, function in saved:
            if name == "init_process_group":
                setattr(module, name, _with_timeout(function, timeout_s))
            else:
                setattr(module, name, _recorded(name, function, out))
        yield out
    finally:
        for module, name, function in saved:
            setattr(module, name, function)


def read_records(out: str | os.PathLike) -> dict[int, list[dict]]:
    """``{rank: [call, ...]}`` from the files :func:`recording` wrote."""
    records = {}
    for path in sorted(Path(out).glob("rank*.jsonl")):
        records[int(path.stem[4:])] = [json.loads(line) for line in path.read_text().splitlines()]
    return records


def _describe(call: dict) -> str:
    return f"{call['op']}{call['args'] or ''} {call['tensors']}"


def assert_same_collectives(out: str | os.PathLike, world: int) -> dict[int, list[dict]]:
    """Fail, naming the first difference, unless every group's members issued identical collective
    sequences on it and every send met a recv of its shape. Returns the records."""
    records = read_records(out)
    assert sorted(records) == list(range(world)), f"records of ranks {sorted(records)}, expected {world}"
    per_group: dict[tuple, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    sent: dict[tuple[int, int], list] = defaultdict(list)
    received: dict[tuple[int, int], list] = defaultdict(list)
    for rank, calls in records.items():
        for call in calls:
            if call["op"] in POINT_TO_POINT:
                if call["op"] in ("send", "isend"):
                    sent[(rank, int(call["args"]["dst"]))].append(call["tensors"])
                else:
                    received[(int(call["args"]["src"]), rank)].append(call["tensors"])
            else:
                per_group[tuple(call["group"])][rank].append(_describe(call))
    for group, sequences in per_group.items():
        reference = sequences[group[0]]
        for rank in group:
            mine = sequences[rank]
            if mine != reference:
                at = next((i for i, (a, b) in enumerate(zip(mine, reference)) if a != b), min(len(mine),
                          len(reference)))  # fmt: skip
                raise AssertionError(
                    f"group {list(group)}: rank {rank} issued {len(mine)} collectives, rank {group[0]} "
                    f"{len(reference)}; first difference at call {at}: rank {rank}: "
                    f"{mine[at] if at < len(mine) else 'nothing'}; rank {group[0]}: "
                    f"{reference[at] if at < len(reference) else 'nothing'}"
                )
    for pair in set(sent) | set(received):
        assert sent[pair] == received[pair], (
            f"{pair[0]} -> {pair[1]}: sent {sent[pair]}, received {received[pair]}"
        )
    return records


def checked_run(run, out: str | os.PathLike, world: int):
    """``run()`` (a recorded multi-process launch), then :func:`assert_same_collectives`. A launch that
    failed (a crash or a collective timeout, as diverging ranks end on gloo) is reported by the first
    difference of its records when they differ, else by its own error."""
    try:
        result = run()
    except AssertionError as err:
        try:
            assert_same_collectives(out, world)
        except AssertionError as diverged:
            raise AssertionError(f"the ranks diverged: {diverged}\n{err}") from None
        raise
    assert_same_collectives(out, world)
    return result
