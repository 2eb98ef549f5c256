"""Where each trainer runs: --sequential honours --gpus like the pipeline does."""

import json

import pytest
import torch
from auglocal.engine.config import RunConfig, UsageError, build_data, resolve
from auglocal.launch.cli import main
from auglocal.launch.run.sequential import sequential_device


def pretend_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_sequential_device_follows_gpus(monkeypatch):
    pretend_gpus(monkeypatch, 2)
    assert sequential_device("1") == "cuda:1"
    assert sequential_device("0-1") == "cuda:0"
    assert sequential_device(None) == "cuda:0"
    assert sequential_device("cpu") == "cpu"
    with pytest.raises(UsageError, match="not available"):
        sequential_device("2")


def test_sequential_device_without_cuda(monkeypatch):
    pretend_gpus(monkeypatch, 0)
    assert sequential_device(None) == "cpu"
    with pytest.raises(UsageError, match="not available"):
        sequential_device("0")


def test_cli_sequential_with_an_absent_gpu_is_bad_input(monkeypatch, capsys, tmp_path):
    pretend_gpus(monkeypatch, 0)
    code = main(["--sequential", "--gpus", "0", "--model", "resnet20", "--dataset", "synthetic", "--input-size", "8",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "not available" in capsys.readouterr().err


def test_cli_sequential_records_its_device(tmp_path):
    out = tmp_path / "run"
    code = main(["--sequential", "--gpus", "cpu", "--model", "resnet20", "--d", "3", "--dataset", "synthetic",
                 "--input-size", "8", "--num-classes", "4", "--train-size", "8", "--test-size", "4",
                 "--batch-size", "4", "--epochs", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"


# The one device map (launch/run/devices.py): which GPU each worker gets, on one host and under torchrun.

def test_one_host_map_spreads_workers_over_the_gpus_or_streams():
    from auglocal.launch.run.devices import one_host_devices

    assert one_host_devices(3, []) == ["cpu"] * 3
    assert one_host_devices(3, ["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1", "cuda:0"]
    assert one_host_devices(8, ["cuda:0"], 8) == ["cuda:0"] * 8
    with pytest.raises(UsageError, match="do not fit"):
        one_host_devices(9, ["cuda:0"], 8)


def test_torchrun_one_node_one_gpu_puts_the_worker_on_gpu_0():
    """--nproc-per-node 2 on a one-GPU node: rank 0 coordinates from the CPU, rank 1 trains on cuda:0 (the old
    cuda:{LOCAL_RANK} asked for cuda:1, which is not there)."""
    from auglocal.launch.run.devices import torchrun_device, torchrun_map

    assert torchrun_map([2], [1]) == [(0, "cpu"), (0, "cuda:0")]
    assert torchrun_device(rank=1, local_rank=1, gpu_count=1) == "cuda:0"


@pytest.mark.parametrize("coordinator_node", ["A", "B"])
def test_torchrun_two_nodes_of_four_gpus_use_every_gpu_once(coordinator_node):
    """Two nodes of 4 GPUs, 8 workers: the coordinator's node starts 5 processes (rank 0 + 4 workers), the other
    4; whichever node holds rank 0 (torchrun's node 0), every GPU of both nodes gets exactly one worker."""
    from auglocal.launch.run.devices import torchrun_map

    names = ["A", "B"] if coordinator_node == "A" else ["B", "A"]      # torchrun's node order
    placed = torchrun_map([5, 4], [4, 4])
    assert placed[0] == (0, "cpu") and len(placed) == 9                # the coordinator holds no GPU
    per_node: dict[str, list[str]] = {}
    for node, device in placed[1:]:
        per_node.setdefault(names[node], []).append(device)
    gpus = [f"cuda:{i}" for i in range(4)]
    assert per_node == {"A": gpus, "B": gpus}
    assert [d for _, d in placed[1:5]] == gpus                         # workers 0-3 beside the coordinator


def test_torchrun_same_process_count_on_both_nodes_and_a_coordinator_that_asks_for_a_gpu():
    """--nproc-per-node 4 on both nodes (7 workers): the coordinator's node has 3 workers on GPUs 0-2; asked
    (AUGLOCAL_COORDINATOR_GPU=1), rank 0 keeps GPU 0 and its node's workers take 1-3."""
    from auglocal.launch.run.devices import coordinator_gpu_asked, torchrun_map

    assert [d for _, d in torchrun_map([4, 4], [4, 4])] == \
        ["cpu", "cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert [d for _, d in torchrun_map([4, 4], [4, 4], coordinator_gpu=True)] == \
        ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert coordinator_gpu_asked({"AUGLOCAL_COORDINATOR_GPU": "1"}) and not coordinator_gpu_asked({})


def test_torchrun_more_workers_than_gpus_share_them_and_impossible_ranks_are_refused():
    from auglocal.launch.run.devices import torchrun_gpu, torchrun_map

    assert [d for _, d in torchrun_map([5], [2])] == ["cpu", "cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match="no CUDA device"):
        torchrun_gpu(rank=1, local_rank=1, gpu_count=0)
    with pytest.raises(ValueError, match="node by node"):
        torchrun_gpu(rank=1, local_rank=2, gpu_count=4)


def test_readme_single_gpu_command_resolves_to_8_stream_workers_on_cuda_0(monkeypatch):
    """README's `--gpus 0 --streams-per-gpu 8` (no --worker-kind): it exited 2 when the kind defaulted to
    process; now 8 thread workers on cuda:0 in one host. An explicit --worker-kind process still exits 2."""
    from auglocal.launch.cli import build_parser, pipeline_options
    from auglocal.launch.run.pipeline import plan_pipeline

    pretend_gpus(monkeypatch, 1)
    flags = ["--model", "resnet20", "--d", "2", "--dataset", "synthetic", "--input-size", "8", "--num-classes", "4",
             "--batch-size", "4", "--balance", "flops", "--gpus", "0", "--streams-per-gpu", "8"]
    opts = pipeline_options(build_parser().parse_args(flags))
    cfg = RunConfig(model="resnet20", d=2, dataset="synthetic", input_size=8, num_classes=4, train_size=8,
                    test_size=4, batch_size=4, device="cuda:0")
    data = build_data(cfg)
    resolve(cfg, data)
    _, placement, _ = plan_pipeline(cfg, data, opts, measure=False)
    assert placement.devices == ["cuda:0"] * 8 and placement.hosts == [list(range(8))]
    with pytest.raises(UsageError, match="cannot be combined with --worker-kind process"):
        pipeline_options(build_parser().parse_args([*flags, "--worker-kind", "process"]))


def test_readme_single_gpu_command_is_not_refused_by_the_cli(monkeypatch, capsys, tmp_path):
    pretend_gpus(monkeypatch, 1)
    code = main(["--model", "resnet20", "--d", "2", "--dataset", "synthetic", "--input-size", "8", "--dry-run",
                 "--gpus", "0", "--streams-per-gpu", "8", "--balance", "flops"])
    out = capsys.readouterr().out
    assert code == 0 and "host 0: workers 0..7 on cuda:0" in out
    assert main(["--model", "resnet20", "--dataset", "synthetic", "--input-size", "8", "--gpus", "0",
                 "--streams-per-gpu", "8", "--worker-kind", "process", "--out", str(tmp_path / "run")]) == 2
    assert "cannot be combined" in capsys.readouterr().err and not (tmp_path / "run").exists()
