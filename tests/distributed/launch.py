"""Run a worker script under ``torchrun`` with N local processes (gloo) and collect its results.

Workers write what they want compared (tensors, losses) with ``torch.save`` into ``$MEGAVG_TEST_OUT``;
the test then compares those files against a single-process reference computed in the test itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A hang guard, not a speed check: a rank stuck in a collective fails by itself after gloo's default
# 30-minute timeout. A tiny healthy run (test_elastic.py's run A) took over 300 s on 2 cores at load
# average 24: a shorter guard fails healthy runs on a busy machine.
HANG_GUARD_S = 1800.0


def torchrun(
    script: str | Path, nproc: int, out_dir: Path, *args: str, timeout: float = HANG_GUARD_S
) -> subprocess.CompletedProcess:
    """Launch ``script`` on ``nproc`` local processes; raise with the workers' output if any fails, else
    return the finished process (``stdout`` / ``stderr`` as text)."""
    env = dict(os.environ)
    env.update(
        MEGAVG_TEST_OUT=str(out_dir),
        OMP_NUM_THREADS="1",
        PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
