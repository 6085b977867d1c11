"""The suite computes on one thread whatever the shell exported: tests/conftest.py pins it before torch
is imported, so in-process references run the same arithmetic as the ranks and subprocesses they check
(which inherit the environment; the torchrun launcher sets 1 as well)."""

import os

import torch


def test_torch_runs_one_thread_here_and_in_the_processes_tests_start():
    assert torch.get_num_threads() == 1
    inherited = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    assert [os.environ[v] for v in inherited] == ["1"] * len(inherited)
