"""The one-host forkserver leaves through os._exit once its launcher is gone (workers/runtime/forkserver_exit.py):
installed there and only there, and a launcher's captured output ends with the launcher."""

import os
import subprocess
import sys
import time
from pathlib import Path

from auglocal.workers.runtime import forkserver_exit

REPO = Path(__file__).resolve().parents[2]


def test_not_installed_outside_the_forkserver():
    assert forkserver_exit._in_forkserver_preload() is False
    assert forkserver_exit.install() is False and forkserver_exit._installed is False


def test_installed_in_the_forkserver_whose_exit_ends_the_captured_output(tmp_path):
    """A launcher-like process starts the forkserver with the worker entry preloaded and exits; the probe, also
    preloaded, saw the quick exit installed in the forkserver, and the pipes it inherited close soon after."""
    probe = tmp_path / "probe.txt"
    script = ("import multiprocessing as mp, multiprocessing.forkserver as fs, pathlib, sys, time\n"
              "ctx = mp.get_context('forkserver')\n"
              "ctx.set_forkserver_preload(['auglocal.workers.runtime.entry', 'tests.workers.forkserver_probe'])\n"
              "fs.ensure_running()\n"
              f"probe = pathlib.Path({str(probe)!r})\n"
              "deadline = time.monotonic() + 120\n"
              "while not probe.exists() or not probe.read_text():\n"
              "    assert time.monotonic() < deadline\n"
              "    time.sleep(0.05)\n"
              "print(probe.read_text(), flush=True)\n")
    env = {**os.environ, "AUGLOCAL_PROBE_FILE": str(probe), "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.wait(timeout=180)
    exited = time.monotonic()
    out, err = proc.communicate(timeout=60)      # end of file: the forkserver, which holds the pipes, is gone
    closed = time.monotonic() - exited
    assert proc.returncode == 0, err
    installed, pid = out.split()
    assert installed == "True" and int(pid) != proc.pid
    assert closed < 30, closed
    assert "Traceback" not in err, err
