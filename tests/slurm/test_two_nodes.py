"""``launchers/megavg.sbatch`` across two SLURM nodes (two slurmd daemons on this host, see
:class:`~tests.slurm.cluster.LocalSlurm`), running the real trainer on the tiny DC-AE-V config.

What a multi-node job adds over one node, and what is checked here: global ranks laid out node by node,
local ranks and the local world size per node, the master address taken from the first node of the job's
node list (a name that must resolve on every node), one log per rank naming its node, and SIGUSR1
preemption -> checkpoint -> requeue -> resume with all nodes taking part, and a job that comes back on
fewer ranks (4 -> 2) resuming from the 4-rank checkpoint (elastic resume, :mod:`megavg.train.elastic`).
"""

from __future__ import annotations

import re

import pytest

from tests.slurm.cluster import LocalSlurm, unavailable_reason
from tests.slurm.jobs import (
    CONFIG,
    STEPS,
    assert_finished,
    assert_stopped_and_resumed,
    job_log,
    rank_log,
    submit,
    train_args,
    wait_for_first_step,
)

pytestmark = [pytest.mark.slurm, pytest.mark.distributed]

ONE_PER_NODE = ("--nodes=2", "--ntasks-per-node=1")
TWO_PER_NODE = ("--nodes=2", "--ntasks-per-node=2")
RANK_LINE = re.compile(r"rank (\d+) of (\d+) \(local rank (\d+) of (\d+)\) on (\S+), master ([^:\s]+):(\d+)")


@pytest.fixture(scope="module")
def slurm2():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with LocalSlurm(nodes=2) as cluster:
        yield cluster


def rank_lines(work, job_id: str, restart: int, world: int) -> list[tuple]:
    """(rank, world, local rank, local world, node, master host) from each rank log's first line."""
    found = []
    for rank in range(world):
        match = RANK_LINE.search(rank_log(work, job_id, restart, rank))
        assert match, f"rank {rank} log has no rank line"
        r, w, lr, lw, node, master, _ = match.groups()
        found.append((int(r), int(w), int(lr), int(lw), node, master))
    return found


def test_one_rank_per_node_trains_with_the_first_node_as_master(slurm2, shards, tmp_path):
    job_id = submit(slurm2, tmp_path, CONFIG, *train_args(shards), layout=ONE_PER_NODE)
    assert_finished(slurm2.wait(job_id, timeout=240))
    assert rank_lines(tmp_path, job_id, 0, 2) == [
        (0, 2, 0, 1, "megavg-n1", "megavg-n1"),
        (1, 2, 0, 1, "megavg-n2", "megavg-n1"),
    ]
    log = job_log(tmp_path, job_id)
    assert "on 2 node(s) [megavg-n[1-2]], ntasks=2, backend gloo, master megavg-n1:" in log
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:08d}"


@pytest.fixture(scope="module")
def preempted_4_ranks(slurm2, shards_one_per_file, tmp_path_factory):
    """A 2 nodes x 2 ranks run, preempted by SIGUSR1 once training has started: (work folder, job id)."""
    work = tmp_path_factory.mktemp("four_ranks")
    job_id = submit(slurm2, work, CONFIG, *train_args(shards_one_per_file), layout=TWO_PER_NODE)
    wait_for_first_step(slurm2, job_id, work / "run" / "metrics.jsonl")
    slurm2.run("scancel", "--signal=USR1", job_id)  # every task of the step, as --signal=USR1@T does
    job = slurm2.wait(
        job_id, timeout=300, until=lambda j: j.restarts >= 1 and j.state in {"COMPLETED", "FAILED"}
    )
    assert_finished(job)
    return work, job_id


def test_two_ranks_per_node_are_preempted_requeued_and_resume(preempted_4_ranks):
    tmp_path, job_id = preempted_4_ranks
    for restart in (0, 1):
        assert rank_lines(tmp_path, job_id, restart, 4) == [
            (0, 4, 0, 2, "megavg-n1", "megavg-n1"),
            (1, 4, 1, 2, "megavg-n1", "megavg-n1"),
            (2, 4, 0, 2, "megavg-n2", "megavg-n1"),
            (3, 4, 1, 2, "megavg-n2", "megavg-n1"),
        ]
    assert_stopped_and_resumed(tmp_path, job_id)
    ckpt = tmp_path / "run" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == f"step_{STEPS:08d}"
    assert len(list((ckpt / f"step_{STEPS:08d}").glob("*_optim_states.pt"))) == 4  # all four ranks saved


def test_a_four_rank_checkpoint_resumes_on_two_ranks(slurm2, shards_one_per_file, preempted_4_ranks):
    work, _ = preempted_4_ranks
    more = STEPS + 2
    args = [*train_args(shards_one_per_file), f"schedule.steps={more}"]
    job_id = submit(slurm2, work, CONFIG, *args, layout=ONE_PER_NODE)  # same run.dir, half the ranks
    assert_finished(slurm2.wait(job_id, timeout=240))
    log = rank_log(work, job_id, 0, 0)
    ckpt = work / "run" / "checkpoints"
    assert f"re-partitioned {ckpt / f'step_{STEPS:08d}'} from 4 to 2 ranks" in log
    assert f"resumed from {ckpt / f'step_{STEPS:08d}'} (step {STEPS})" in log
    assert (ckpt / "latest").read_text().strip() == f"step_{more:08d}"
    assert len(list((ckpt / f"step_{more:08d}").glob("*_optim_states.pt"))) == 2
