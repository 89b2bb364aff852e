import os
import sys

from charrnn.cli import app
from charrnn.launch import launched


def end_of_launched_process() -> None:
    """One process of a torchrun launch ends without the interpreter's teardown: gloo's threads, torn down after
    Python's, have aborted a process that had finished its run and left the group (SIGABRT, "terminate called
    without an active exception"), which torchrun reports as a failed launch. Every file is closed by now."""
    try:
        app(prog_name="charrnn")
        code = 0
    except SystemExit as end:
        code = end.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if launched():
    end_of_launched_process()
else:
    app(prog_name="charrnn")
