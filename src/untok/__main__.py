import os
import sys

from untok.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a training process that torchrun started
    # End without interpreter shutdown: gloo's worker threads can still be releasing the
    # last collective's tensors, and doing that while Python shuts down aborts the process
    # (a finished run then reads as failed). The process group is destroyed and every file
    # closed by now; flush what was printed and leave.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
