"""The forkserver that starts workers dies mid-run: its workers, reparented to init, must not run on, and the
run must not blame a worker's 'exit code 255' that never happened."""

from __future__ import annotations

import multiprocessing.forkserver as forkserver
import os
import signal

import psutil
from auglocal.launch.run.coordinator import Coordinator

from tests.faults.support import assert_complete, assert_no_orphan_workers, run_in_process


def test_killed_forkserver_is_recognised_and_its_workers_stopped(monkeypatch, reference, tmp_path):
    original = Coordinator._feed_train
    killed = {}

    def feed_train(self, event):
        original(self, event)
        if event.global_step == 4 and not killed:
            killed["workers"] = [psutil.Process(w.process.pid) for w in self.workers]
            os.kill(forkserver._forkserver._forkserver_pid, signal.SIGKILL)
            killed["done"] = True

    monkeypatch.setattr(Coordinator, "_feed_train", feed_train)
    out = tmp_path / "run"
    assert run_in_process(out) == 0
    s = assert_complete(reference, out, restarts=1)
    assert "forkserver died" in s["restarts"][0]["error"]
    for p in killed["workers"]:          # the first attempt's workers are gone, not adopted by init
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    assert_no_orphan_workers()
