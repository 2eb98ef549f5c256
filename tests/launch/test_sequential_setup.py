"""The sequential trainer (the oracle) sets its process up as a worker does: AUGLOCAL_DETERMINISTIC=1 turns on
deterministic algorithms before its first GEMM, else a GPU parity check would compare a deterministic pipeline
with a non-deterministic oracle."""

import pytest
import torch
from auglocal.engine.config import RunConfig
from auglocal.launch.run import sequential


class Built(Exception):
    """Raised in place of building the network: the test only looks at the set-up before it."""


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("asked", ["1", None])
def test_the_oracle_obeys_auglocal_deterministic(asked, monkeypatch, restore_determinism, tmp_path):
    torch.use_deterministic_algorithms(False)
    if asked is None:
        monkeypatch.delenv("AUGLOCAL_DETERMINISTIC", raising=False)
    else:
        monkeypatch.setenv("AUGLOCAL_DETERMINISTIC", asked)
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = {}

    def build_network(cfg, data):
        seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
        raise Built

    monkeypatch.setattr(sequential, "build_network", build_network)
    with pytest.raises(Built):
        sequential.train_sequential(RunConfig(), data=None, out=str(tmp_path / "run"), progress=False)
    assert seen["deterministic"] is (asked == "1")
