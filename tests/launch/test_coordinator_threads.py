"""CPU use of a run: the coordinator prepares batches on one thread while CPU workers hold the cores (and gives
the setting back), and workers report their compute's CPU seconds apart from its wall time."""

import json

import pytest
import torch
from auglocal.launch.run.pipeline import PipelineOptions, coordinator_threads, train_pipeline
from auglocal.workers.runtime.faults import parse_fault

from tests.launch.test_parity import small_run


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_cpu_workers_get_one_coordinator_thread_and_the_setting_comes_back(two_threads):
    with coordinator_threads(["cpu", "cpu"]):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), coordinator_threads(["cpu"]):
        raise RuntimeError("a failed run")
    assert torch.get_num_threads() == 2


def test_gpu_workers_leave_the_coordinator_threads_alone(two_threads):
    with coordinator_threads(["cuda:0", "cuda:1"]):
        assert torch.get_num_threads() == 2


def test_a_cpu_pipeline_prepares_every_batch_on_one_thread(two_threads, tmp_path):
    cfg, data = small_run("auglocal", epochs=1, max_steps=2)
    seen = []
    train_batch = data.train_batch

    def recording_train_batch(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return train_batch(*args, **kwargs)

    data.train_batch = recording_train_batch
    # worker 1 sleeps 0.2 s inside every step: wall time it is busy, CPU time it is not
    opts = PipelineOptions(workers="2", balance="flops", threads=1, fault=parse_fault("slow:worker=1:delay=0.2"))
    assert train_pipeline(cfg, data, opts, out=str(tmp_path / "run"), progress=False) == 0
    assert len(seen) >= 2 and set(seen[-2:]) == {1}   # the fed steps (planning may take one batch before)
    assert torch.get_num_threads() == 2

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    cpu = summary["cpu_s_per_step"]
    assert len(cpu) == 2 and all(c > 0 for c in cpu)
    assert cpu[1] < 0.2            # the 0.2 s sleep in each of its steps is busy (wall) time, not CPU time
