"""Fixtures of the fault-injection suite: the sequential reference and a killed run, computed once per session;
a private socket root whose emptiness after every test proves that no run leaks its socket folder."""

import contextlib
import io
import os
import shutil
import signal
import tempfile
from pathlib import Path

import psutil
import pytest
from auglocal.launch.backends.one_host.sockets import ROOT_VAR
from auglocal.launch.cli import main

from tests.faults.support import Reference, assert_no_tagged, new_tag, run_cli, sequential_reference, small_flags

# Every run of this session (in this process or its children) puts its socket folders here. A short path:
# ipc:// socket paths are limited to about 100 characters.
SOCKET_ROOT = Path(tempfile.mkdtemp(prefix="als-"))
os.environ[ROOT_VAR] = str(SOCKET_ROOT)


@pytest.fixture(scope="session", autouse=True)
def _socket_root():
    yield SOCKET_ROOT
    shutil.rmtree(SOCKET_ROOT, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_socket_folder_leaks():
    """After every test of the suite, no socket folder may remain: finished runs remove theirs, and a test that
    kills a launcher must clean up after it (as `auglocal-launch --cleanup` does)."""
    yield
    left = sorted(p.name for p in SOCKET_ROOT.iterdir())
    assert not left, f"socket folders leaked in {SOCKET_ROOT}: {left}"


@pytest.fixture(scope="session")
def reference() -> Reference:
    """The small run trained by the sequential trainer: every faulted run must end with its weights."""
    return sequential_reference()


@pytest.fixture(scope="session")
def coordinator_killed(tmp_path_factory):
    """A run whose coordinator (the CLI process) is SIGKILLed after feeding minibatch 8 of 12 (2 workers).

    Tests copy the folder before changing anything in it. The killed launcher could not remove its socket
    folder: `auglocal-launch --cleanup` finds and removes exactly that one."""
    out = tmp_path_factory.mktemp("coordinator") / "run"
    tag = new_tag()
    proc = run_cli(small_flags(out, "--workers", "2", "--inject-fault", "kill-coordinator:step=8"), tag)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert_no_tagged(tag)        # its workers noticed and exited; the forkserver went with the coordinator
    stale = sorted(SOCKET_ROOT.iterdir())
    assert len(stale) == 1, stale                 # the killed launcher's, named after its (dead) pid
    assert not psutil.pid_exists(int(stale[0].name.split("-")[0]))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--cleanup"]) == 0
    assert f"removed stale socket folder {stale[0]}\n" in printed.getvalue()
    assert not list(SOCKET_ROOT.iterdir())
    return out

