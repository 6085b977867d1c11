"""torchrun worker: run ``-m MODULE ARGS`` or ``SCRIPT ARGS`` with every collective recorded
(:mod:`tests.collectives`) into ``$MEGAVG_TEST_COLLECTIVES``, optionally with a fault on one rank.

``MEGAVG_TEST_FAULT`` (on rank ``MEGAVG_TEST_FAULT_RANK``, default 1; comma-separated for several):

- ``free_memory``: the GPU free-memory reading the sampler's CFG decision uses
  (:func:`megavg.infer.sampling.free_memory`) is 0 bytes on that rank and 1 TiB on the others, as after
  bucketed steps left one rank's caching allocator fuller;
- ``read_fail``: reading a checkpoint file to hash it (:func:`megavg.train.ckpt_integrity.describe`)
  fails with EIO on that rank (a flaky shared filesystem);
- ``stop_in_validation``: that rank receives SIGUSR1 right after its first validation sample;
- ``video_read_fail``: every video that rank decodes for ``megavg.eval``
  (:func:`megavg.eval.inputs.read_video`) fails as an I/O error reading it does (a flaky shared
  filesystem; the other ranks read theirs).
- ``encode_after_a_step`` (give it rank 0): that rank's validation-prompt encoding
  (:func:`megavg.train.validation.encode_all`) starts only once the same process has finished a training
  step, waiting at most ``ENCODE_WAIT_S``: encoding that runs *while* training does goes ahead at once;
  encoding that blocks training waits the whole time, so the other ranks wait longer than the collective
  timeout. It prints ``encode_after_a_step: ...`` saying which happened.

``MEGAVG_TEST_PG_TIMEOUT`` (seconds, default 60) bounds every collective of the run.
"""

from __future__ import annotations

import errno
import os
import runpy
import signal
import sys

from tests.collectives import ENV, TIMEOUT_ENV, recording

TIB = 2**40
ENCODE_WAIT_S = 150.0  # longer than recorded_train's collective timeout (parallel.timeout_minutes=1)


def install_faults() -> None:
    faults = [f for f in os.environ.get("MEGAVG_TEST_FAULT", "").split(",") if f]
    if int(os.environ.get("RANK", "0")) != int(os.environ.get("MEGAVG_TEST_FAULT_RANK", "1")):
        faults = [f for f in faults if f == "free_memory"]  # the other ranks read plenty of memory
        mine = False
    else:
        mine = True
    for fault in faults:
        if fault == "free_memory":
            from megavg.infer import sampling

            sampling.free_memory = lambda device: 0 if mine else TIB
        elif fault == "read_fail":
            from megavg.train import ckpt_integrity

            def describe(tag_dir, names):
                raise OSError(errno.EIO, "Input/output error (injected)", str(tag_dir))

            ckpt_integrity.describe = describe
        elif fault == "stop_in_validation":
            from megavg.train import validation

            def sample(self, engine, item, real=validation.Validator.sample):
                out = real(self, engine, item)
                os.kill(os.getpid(), signal.SIGUSR1)
                return out

            validation.Validator.sample = sample
        elif fault == "video_read_fail":
            from megavg.data.video import VideoError
            from megavg.eval import inputs

            def frames(source, name, count):
                raise VideoError(f"{name}: not a decodable video ([Errno 5] Input/output error (injected))")

            inputs._frames = frames
        elif fault == "encode_after_a_step":
            encode_after_a_step()
        else:
            raise SystemExit(f"recorded.py: unknown fault {fault!r}")


def encode_after_a_step() -> None:
    import threading
    import time

    from megavg.train import loop, validation

    stepped = threading.Event()

    def train_step(self, real=loop.Trainer.train_step):
        out = real(self)
        stepped.set()
        return out

    def encode_all(*args, real=validation.encode_all):
        start = time.monotonic()
        if stepped.wait(ENCODE_WAIT_S):
            print("encode_after_a_step: encoding began after a training step", flush=True)
        else:
            print(f"encode_after_a_step: no training step in {time.monotonic() - start:.0f} s", flush=True)
        return real(*args)

    loop.Trainer.train_step = train_step
    validation.encode_all = encode_all


def main() -> None:
    argv = sys.argv[1:]
    install_faults()
    with recording(os.environ[ENV], float(os.environ.get(TIMEOUT_ENV, "60"))):
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv
            runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
