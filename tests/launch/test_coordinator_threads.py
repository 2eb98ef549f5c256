"""The coordinator prepares batches on one thread while CPU workers hold the cores, and gives the setting back."""

import pytest
import torch

from launch.pipeline import PipelineOptions, coordinator_threads, train_pipeline
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
    opts = PipelineOptions(workers="2", balance="flops", threads=1)
    assert train_pipeline(cfg, data, opts, out=str(tmp_path / "run"), progress=False) == 0
    assert len(seen) >= 2 and set(seen[-2:]) == {1}   # the fed steps (planning may take one batch before)
    assert torch.get_num_threads() == 2
