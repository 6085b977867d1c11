"""``torchrun --nproc_per_node 2 -m megavg.eval fvd|recon``: the same JSON numbers as one process."""

import json
import os
import subprocess
import sys

import pytest

from megavg.eval.__main__ import main
from tests.distributed.launch import REPO, free_port
from tests.eval.test_fvd import ARGS


def torchrun_eval(nproc: int, *argv: str) -> dict:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "megavg.eval", *argv]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # one JSON object, from rank 0 only
    return json.loads(lines[0])


@pytest.mark.distributed
def test_two_ranks_give_the_one_rank_numbers(video_dirs, capsys):
    real, fake = video_dirs
    fvd_argv = ["fvd", str(real), str(fake), *ARGS, "--batch", "1"]
    recon_argv = ["recon", str(real), str(fake)]
    single = {}
    for argv in (fvd_argv, recon_argv):
        main(argv)
        single[argv[0]] = json.loads(capsys.readouterr().out)
    assert torchrun_eval(2, *fvd_argv)["fvd"] == pytest.approx(single["fvd"]["fvd"], rel=1e-9)
    assert torchrun_eval(2, *recon_argv) == single["recon"]  # the same per-video computations, gathered
