"""torchrun worker that prints its process id (one line on the stdout it inherits from torchrun) and then
waits for a signal, joining no process group: a rank that only a kill can end."""

import os
import signal

os.write(1, f"{os.getpid()}\n".encode())  # one write (< PIPE_BUF: atomic), so the ranks' lines never mix
signal.pause()
