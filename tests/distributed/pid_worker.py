"""torchrun worker that prints its process id (one line on the stdout it inherits from torchrun) and then
waits for a signal, joining no process group: a rank that only a kill can end."""

import os
import signal

print(os.getpid(), flush=True)
signal.pause()
