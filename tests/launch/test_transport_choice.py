"""--transport: auto picks per pair, impossible choices exit 2, the single-host launcher wires ipc or tcp."""

import pytest
from auglocal.launch.cli import main
from auglocal.launch.run.transport_choice import Place, link_address, one_host_transport, pick_for_pair


def test_auto_picks_per_pair():
    cpu_a, cpu_b = Place("a"), Place("b")
    gpu_a0, gpu_a1, gpu_b0 = Place("a", "cuda:0"), Place("a", "cuda:1"), Place("b", "cuda:0")
    assert pick_for_pair(cpu_a, Place("a")) == "ipc"
    assert pick_for_pair(cpu_a, cpu_b) == "curve"
    assert pick_for_pair(gpu_a0, gpu_a1) == "cuda-ipc"
    assert pick_for_pair(gpu_a0, gpu_b0) == "nccl"
    assert pick_for_pair(gpu_a0, cpu_a) == "ipc" and pick_for_pair(gpu_b0, cpu_a) == "curve"


def test_single_host_addresses(tmp_path):
    assert one_host_transport("auto") == "ipc"
    assert link_address("ipc", "w0", str(tmp_path)).startswith("ipc://")
    host, port = link_address("tcp", "w0", str(tmp_path)).removeprefix("tcp://").split(":")
    assert host == "127.0.0.1" and 0 < int(port) < 65536


@pytest.mark.parametrize("transport, expected", [
    ("cuda-ipc", "moves tensors between GPUs"),
    ("nccl", "moves tensors between GPUs"),
    ("gloo", "single-host launcher wires ipc, tcp or curve"),
])
def test_impossible_transport_exits_2(transport, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["--transport", transport, "--gpus", "cpu", "--epochs", "1", "--max-steps", "1"])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()   # a bad flag leaves no half-made run folder behind
