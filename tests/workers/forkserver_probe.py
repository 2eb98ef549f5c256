"""Preloaded by tests/workers/test_forkserver_exit.py's forkserver after auglocal.workers.runtime.entry: writes
whether the forkserver's quick exit was installed there into the file $AUGLOCAL_PROBE_FILE."""

import os

from auglocal.workers.runtime import forkserver_exit

if os.environ.get("AUGLOCAL_PROBE_FILE"):
    with open(os.environ["AUGLOCAL_PROBE_FILE"], "w") as f:
        f.write(f"{forkserver_exit._installed} {os.getpid()}")
