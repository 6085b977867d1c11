"""``torchrun --nproc_per_node 2 -m megavg.eval fvd|recon``: the same JSON numbers as one process."""

import json

import pytest

from megavg.eval.__main__ import main
from tests.distributed.launch import torchrun
from tests.eval.test_fvd import ARGS


def torchrun_eval(nproc: int, tmp_path, *argv: str) -> dict:
    """``torchrun -m megavg.eval ARGV`` (the harness's launcher, module mode); its one stdout line."""
    proc = torchrun("-m", nproc, tmp_path, "megavg.eval", *argv)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # one JSON object, from rank 0 only
    return json.loads(lines[0])


@pytest.mark.distributed
def test_two_ranks_give_the_one_rank_numbers(video_dirs, tmp_path, capsys):
    real, fake = video_dirs
    fvd_argv = ["fvd", str(real), str(fake), *ARGS, "--batch", "1"]
    recon_argv = ["recon", str(real), str(fake)]
    single = {}
    for argv in (fvd_argv, recon_argv):
        main(argv)
        single[argv[0]] = json.loads(capsys.readouterr().out)
    assert torchrun_eval(2, tmp_path, *fvd_argv)["fvd"] == pytest.approx(single["fvd"]["fvd"], rel=1e-9)
    # the same per-video computations, gathered in name order
    assert torchrun_eval(2, tmp_path, *recon_argv) == single["recon"]
