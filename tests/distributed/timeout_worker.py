"""torchrun worker: start torch.distributed with megavg's ``init_distributed`` and a timeout of
``$MEGAVG_TEST_TIMEOUT_MIN`` minutes, then rank 1 reaches a barrier ``$MEGAVG_TEST_LATE_S`` seconds late.
Rank 0 prints one line: whether its barrier raised, and how long it waited."""

import os
import time

import torch.distributed as dist

from megavg.train.engine import init_distributed

init_distributed("gloo", float(os.environ["MEGAVG_TEST_TIMEOUT_MIN"]))
if dist.get_rank() == 1:
    time.sleep(float(os.environ["MEGAVG_TEST_LATE_S"]))
start = time.monotonic()
try:
    dist.barrier()
    outcome = "returned"
except RuntimeError:
    outcome = "raised"
if dist.get_rank() == 0:
    os.write(1, f"barrier {outcome} after {time.monotonic() - start:.1f} s\n".encode())  # one atomic write
os._exit(0)  # no teardown: the process group is broken on purpose
