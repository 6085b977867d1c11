"""``tools/gpu_check.sh``: without CUDA one line and nothing run; a table entry is "pass" only for what
ran; the CPU rehearsal (2 gloo ranks, the stand-ins) runs every check of the table and passes."""

import contextlib
import json
import os
import select
import signal
import subprocess
import sys

import pytest

from tests.distributed.launch import REPO

sys.path.insert(0, str(REPO / "tools"))
from gpu_check import Setup, kill_tree, pytest_result, write_videos  # noqa: E402

NO_CUDA = "gpu_check: no CUDA device visible to torch on this machine: nothing run"


def test_without_cuda_one_line_and_nothing_run(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [NO_CUDA] and not proc.stderr
    assert not any(tmp_path.iterdir())  # no work folder: no inputs prepared, no check started


SKIP_LINE = "SKIPPED [2] tests/models/test_wan_gpu.py:20: needs transformer_engine"


@pytest.mark.parametrize(
    ("rc", "text", "expected"),
    [
        (0, "3 passed in 1.0s", 0),
        (0, f"{SKIP_LINE}\n3 skipped in 1.0s", "skipped: 3 gpu tests, none ran (needs transformer_engine)"),
        (
            0,
            f"{SKIP_LINE}\n1 passed, 2 skipped in 1.0s",
            "partial: 1 passed, 2 skipped (needs transformer_engine)",
        ),
        (5, "no tests ran in 0.1s", "skipped: 0 gpu tests, none ran"),
        (1, "1 failed, 2 passed in 1.0s", 1),
    ],
)
def test_skipped_gpu_tests_never_read_pass(rc, text, expected):
    assert pytest_result(rc, text) == expected


def test_eight_ranks_get_eight_distinct_video_shards(tmp_path):
    """An 8-GPU node: one shard per data-parallel rank, each a different window (4 shipped clips gave 4
    shards, and every training check failed with "4 shard(s) cannot feed 8 data-parallel ranks")."""
    from megavg.data.shards import list_shards
    from megavg.infer.video_io import read_pieces

    setup = Setup(8, "cpu", {}, tmp_path, 60.0, None, None, {"videos": tmp_path / "videos"})
    write_videos(setup)
    assert len(list_shards(str(tmp_path / "videos"), "video")) == 8
    windows = [next(read_pieces(p, 16))[0] for p in sorted((tmp_path / "videos-raw").glob("*.mp4"))]
    assert len(windows) == 8
    distinct = {tuple(w.flatten()[::997].tolist()) for w in windows}
    assert len(distinct) == 8


@pytest.mark.slow
@pytest.mark.distributed
def test_cpu_rehearsal_on_two_ranks_passes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--cpu-rehearsal", "2", "--work", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CPU rehearsal: 2 gloo ranks" in proc.stdout
    rows = {row["check"]: row["result"] for row in json.loads((tmp_path / "results.json").read_text())}
    assert rows.pop("gpu-marked tests").startswith("skipped: --cpu-rehearsal")
    assert len(rows) == 12 and set(rows.values()) == {"pass"}, rows


def end_of_file(fd: int, guard_s: float = 120.0) -> bool:
    """Read ``fd`` (a pipe) to its end: True once every process holding its write end has exited; False
    after ``guard_s`` seconds without data or end (a hang guard, not a speed check: a killed process
    closes the pipe at once, a survivor never does)."""
    while select.select([fd], [], [], guard_s)[0]:
        if not os.read(fd, 4096):
            return True
    return False


@pytest.mark.slow  # a torchrun start-up: ~5-15 s on 2 busy cores
@pytest.mark.distributed
def test_killing_a_launch_kills_every_rank():
    """kill and resume's kill: torch elastic starts each rank in a session of its own, so killing torchrun's
    process group left the ranks running (they trained on and wrote later checkpoints). After
    ``kill_tree`` every process holding torchrun's stdout (torchrun and both ranks) is gone: the pipe
    reaches end of file."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests/distributed/pid_worker.py")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)  # fmt: skip
    ranks = [int(proc.stdout.readline()) for _ in range(2)]  # both ranks started
    kill_tree(proc.pid)
    try:
        ended = end_of_file(proc.stdout.fileno())
    finally:
        for pid in ranks:  # a surviving rank would pause forever
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert ended, f"ranks {ranks} outlived the kill"
