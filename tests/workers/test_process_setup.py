"""The one process set-up (workers/runtime/process_setup.py), and that every entry point goes through it.

Each entry point is driven in this process up to the first thing it does after its set-up (opening or binding
its links), which a stub records and stops: what the set-up applied is then this process's state. CUDA is
faked by replacing torch.cuda.set_device, so the device each entry point selects shows on CPU.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from auglocal.workers.links.link import Link
from auglocal.workers.runtime import process_setup
from auglocal.workers.runtime.process_setup import (
    CUBLAS_DETERMINISTIC,
    CUBLAS_VAR,
    DETERMINISTIC_VAR,
    apply_determinism,
)
from auglocal.workers.runtime.worker import WorkerSpec

ENV = (DETERMINISTIC_VAR, CUBLAS_VAR, "OMP_NUM_THREADS")


class Reached(Exception):
    """Raised by a stub where the entry point opens its links: the set-up is over by then."""


@pytest.fixture
def process_state(monkeypatch):
    """Restores what a set-up changes (threads, deterministic algorithms, SIGINT, environment) and fakes
    torch.cuda.set_device; yields the list of devices it was called with."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    sigint = signal.getsignal(signal.SIGINT)
    saved = {name: os.environ.get(name) for name in ENV}
    for name in ENV:
        os.environ.pop(name, None)
    selected: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: selected.append(torch.device(device)))
    try:
        yield selected
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        signal.signal(signal.SIGINT, sigint)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def make_spec(tmp_path, device: str = "cpu", threads: int = 1, rank: int = 0) -> WorkerSpec:
    return WorkerSpec(rank=rank, modules=[0], config={}, inbox=Link(f"ipc://{tmp_path}/in{rank}", 2),
                      outbox=None, results=Link(f"ipc://{tmp_path}/res", 64), run_id="r1", secret="s" * 32,
                      out_dir=str(tmp_path), coordinator_pid=os.getpid(), threads=threads, device=device)


def applied() -> dict:
    """What a set-up leaves in this process."""
    return {"threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled(),
            "cublas": os.environ.get(CUBLAS_VAR), "omp": os.environ.get("OMP_NUM_THREADS"),
            "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN}


def test_determinism_sets_the_cublas_workspace_unless_chosen(process_state):
    assert apply_determinism() is False and torch.are_deterministic_algorithms_enabled() is False
    assert CUBLAS_VAR not in os.environ
    os.environ[DETERMINISTIC_VAR] = "1"
    assert apply_determinism() is True
    assert torch.are_deterministic_algorithms_enabled() and os.environ[CUBLAS_VAR] == CUBLAS_DETERMINISTIC
    os.environ[CUBLAS_VAR] = ":16:8"                      # the caller's own deterministic setting stays
    apply_determinism()
    assert os.environ[CUBLAS_VAR] == ":16:8"


def test_the_device_is_selected_only_for_cuda(process_state):
    process_setup.select_device("cpu")
    process_setup.select_device("cuda:1")
    assert process_state == [torch.device("cuda:1")]


def test_malloc_return_goes_to_glibc(process_state, monkeypatch):
    calls = []
    monkeypatch.setattr(process_setup, "return_freed_memory", lambda: calls.append(1))
    process_setup.set_up_process(1, "keep")
    process_setup.set_up_process(1, "return")
    assert calls == [1]


def expected(threads: int) -> dict:
    return {"threads": threads, "deterministic": True, "cublas": CUBLAS_DETERMINISTIC, "omp": str(threads),
            "sigint_ignored": True}


def test_worker_process_entry_goes_through_the_set_up(process_state, monkeypatch, tmp_path):
    from auglocal.workers.runtime import entry

    seen = {}

    def stop(spec, codec):
        seen.update(applied())
        raise Reached

    monkeypatch.setattr(entry, "open_links", stop)
    os.environ[DETERMINISTIC_VAR] = "1"
    with pytest.raises(Reached):
        entry.worker_main(make_spec(tmp_path, "cuda:1", threads=2))
    assert seen == expected(2)
    assert process_state == [torch.device("cuda:1")]          # before: nothing selected the worker's GPU


def test_thread_host_entry_goes_through_the_set_up(process_state, monkeypatch, tmp_path):
    from auglocal.workers.runtime import host

    seen = {}

    def stop(specs, codec):
        seen.update(applied())
        raise Reached

    monkeypatch.setattr(host, "host_links", stop)
    os.environ[DETERMINISTIC_VAR] = "1"
    specs = [make_spec(tmp_path, "cuda:2", threads=t, rank=r) for r, t in enumerate((1, 3))]
    specs[0].outbox = specs[1].inbox
    with pytest.raises(Reached):
        host.host_main(specs)
    assert seen == expected(3)                                # the widest worker's threads
    assert process_state == [torch.device("cuda:2")]


class FakeStore:
    """Rank 0's store as a worker rank reads it: one published spec."""

    secret, timeout_s = "run-secret", 5.0

    def __init__(self, published: bytes):
        self.published = published

    def wait_for(self, key, alive=None):
        pass

    def get(self, key):
        return self.published

    def put(self, key, value):
        pass

    def alive(self):
        return True


@pytest.mark.parametrize("rank, local_rank, gpus, device", [
    (1, 1, 1, "cuda:0"),      # one node, one GPU: before, LOCAL_RANK gave cuda:1, a GPU that is not there
    (5, 0, 4, "cuda:0"),      # first worker of the second node
    (3, 3, 4, "cuda:2"),      # third worker on the coordinator's node
])
def test_elastic_rank_entry_goes_through_the_set_up_on_the_mapped_gpu(process_state, monkeypatch, tmp_path,
                                                                     rank, local_rank, gpus, device):
    from auglocal.launch.backends.elastic import worker as elastic_worker
    from auglocal.launch.backends.elastic.coordinator import spec_to_wire
    from auglocal.launch.backends.elastic.links import LinkPlan
    from auglocal.launch.backends.elastic.store import TorchrunEnv

    seen = {}

    def stop(*args, **kwargs):
        seen.update(applied())
        raise Reached

    monkeypatch.setattr(elastic_worker, "publish_key", lambda store, rank, addr: None)
    monkeypatch.setattr(elastic_worker, "bind_inbox", stop)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    spec = make_spec(tmp_path, "cuda:0", threads=2, rank=rank - 1)
    plan = LinkPlan(inbox=("curve",) * 8, results="curve", group=None)
    store = FakeStore(spec_to_wire(spec, {}, plan))
    env = TorchrunEnv(rank=rank, world_size=9, local_rank=local_rank, restart_count=0, master_addr="127.0.0.1",
                      master_port=1)
    os.environ[DETERMINISTIC_VAR] = "1"
    with pytest.raises(Reached):
        elastic_worker.run_worker(env, store, "127.0.0.1")
    assert seen == expected(2)                                # before: no determinism, no OMP_NUM_THREADS
    assert process_state == [torch.device(device)]


def test_an_elastic_gpu_worker_on_a_node_without_gpus_says_so(process_state, monkeypatch, tmp_path, capsys):
    from auglocal.launch.backends.elastic import worker as elastic_worker
    from auglocal.launch.backends.elastic.coordinator import spec_to_wire
    from auglocal.launch.backends.elastic.links import LinkPlan
    from auglocal.launch.backends.elastic.store import TorchrunEnv

    monkeypatch.setattr(elastic_worker, "publish_key", lambda store, rank, addr: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    spec = make_spec(tmp_path, "cuda:0")
    store = FakeStore(spec_to_wire(spec, {}, LinkPlan(inbox=("curve",), results="curve", group=None)))
    env = TorchrunEnv(rank=1, world_size=2, local_rank=1, restart_count=0, master_addr="127.0.0.1", master_port=1)
    assert elastic_worker.run_worker(env, store, "127.0.0.1") == elastic_worker.EXIT_REFUSED
    assert "has no CUDA device" in capsys.readouterr().err and process_state == []
