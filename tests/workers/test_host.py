"""workers/runtime/host.py on CPU: what a thread host does with its GPU, with the CUDA calls replaced by recorders."""

import os

import torch
from auglocal.workers.links.link import Link
from auglocal.workers.runtime import host
from auglocal.workers.runtime.worker import WorkerSpec


class FakeWorker:
    """Stands in for a Worker whose stage would live on a GPU this machine lacks."""

    def __init__(self, spec, links, coordinator_alive=None):
        self.spec, self.links = spec, links
        self.stage = type("Stage", (), {})()


def test_build_workers_waits_for_the_hosts_gpu_not_the_current_device(monkeypatch, tmp_path):
    """The initial weights are written on the host GPU's default stream before each thread starts on its own
    stream: the wait must be for that GPU. synchronize() without a device waited for the current one (cuda:0
    in a host on cuda:1)."""
    waited = []
    monkeypatch.setattr(host, "Worker", FakeWorker)
    monkeypatch.setattr(host, "coordinator_watch", lambda pid: (lambda: True))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    specs = [WorkerSpec(rank=r, modules=[r], config={}, inbox=Link(f"ipc://{tmp_path}/{r}", 2), outbox=None,
                        results=Link(f"ipc://{tmp_path}/res", 64), run_id="r", secret="s", out_dir=str(tmp_path),
                        coordinator_pid=os.getpid(), device="cuda:1") for r in range(2)]
    workers = host.build_workers(specs, [None, None])
    assert [w.spec.rank for w in workers] == [0, 1]
    assert waited == [torch.device("cuda:1")]
