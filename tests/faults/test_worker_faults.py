"""Worker faults in a pipelined run (train_pipeline in this process): each ends with the reference's weights.

The small run has 12 minibatches (6 per epoch) and checkpoints after minibatches 2, 4, 6 (epoch end), 8, 10
and 12; faults at global step 8 hit the second epoch, so a restart replays from a checkpoint in epoch 2 or
from the epoch boundary.
"""

import json

import pytest

from tests.faults.support import assert_complete, assert_no_orphan_workers, run_in_process


@pytest.mark.parametrize("fault, worker", [
    ("kill:worker=1:step=8", 1),
    ("kill:worker=0:step=3", 0),
    ("kill:worker=1:step=6", 1),        # first minibatch of epoch 2: restart at or before the epoch boundary
    ("kill-checkpoint:worker=1:checkpoint=4", 1),
])
def test_worker_death_restarts_and_ends_equal(fault, worker, reference, tmp_path):
    out = tmp_path / "run"
    assert run_in_process(out, fault) == 0
    s = assert_complete(reference, out, restarts=1)
    restart = s["restarts"][0]
    assert restart["worker"] == worker
    assert "died with exit code -9" in restart["error"]
    assert_no_orphan_workers()


def test_hung_worker_is_detected_by_heartbeat_timeout(reference, tmp_path):
    out = tmp_path / "run"
    assert run_in_process(out, "hang:worker=1:step=8", heartbeat_timeout=4.0) == 0
    s = assert_complete(reference, out, restarts=1)
    assert s["restarts"][0]["worker"] == 1
    assert "hung" in s["restarts"][0]["error"]
    assert_no_orphan_workers()


def test_slow_worker_is_not_a_failure(reference, tmp_path):
    """Slower than every other worker, but within the heartbeat timeout: no restart, same weights."""
    out = tmp_path / "run"
    assert run_in_process(out, "slow:worker=1:delay=0.2", heartbeat_timeout=10.0) == 0
    assert_complete(reference, out, restarts=0)
    assert_no_orphan_workers()


@pytest.mark.parametrize("kind, error", [
    ("truncated", "rejected a message"),   # the header is this run's, the frames are bad: the peer failed
    ("corrupt", "lost on the way"),        # the header does not parse: dropped as a stranger's, and the gap
])                                         # in the message sequence shows at the next one
def test_malformed_message_is_never_trained_on_and_restarts(kind, error, reference, tmp_path):
    """A malformed message on a link is never trained on: the receiver stops, the run restarts."""
    out = tmp_path / "run"
    assert run_in_process(out, f"{kind}:worker=0:step=8") == 0
    s = assert_complete(reference, out, restarts=1)
    assert s["restarts"][0]["worker"] == 1          # the receiving worker reports the bad message
    assert error in s["restarts"][0]["error"]
    assert s["rejected_messages"] == (1 if kind == "corrupt" else 0)
    assert_no_orphan_workers()


def test_foreign_message_is_counted_and_ignored(reference, tmp_path):
    """A message of another run (a stray process) is dropped and counted; no restart, same weights."""
    out = tmp_path / "run"
    assert run_in_process(out, "foreign:worker=0:step=8") == 0
    s = assert_complete(reference, out, restarts=0)
    assert s["rejected_messages"] >= 1
    assert_no_orphan_workers()


def test_crash_while_checkpointing_leaves_last_commit_loadable(tmp_path):
    """Worker 1 dies half-way through writing checkpoint 4 and no restart is allowed: the committed checkpoint
    before it loads with weights_only=True, is a consistent cut and equals the sequential trainer at that
    step."""
    import torch
    from auglocal.engine.config import build_network
    from auglocal.launch.run.checkpoints import CheckpointStore
    from auglocal.workers.runtime.layer_files import head_file, layer_file, load_layers_into

    from tests.faults.support import sequential_reference, small_run

    out = tmp_path / "run"
    assert run_in_process(out, "kill-checkpoint:worker=1:checkpoint=4", max_restarts=0) == 1
    failure = json.loads((out / "failure.json").read_text())
    store = CheckpointStore(out)
    ckpt_id = int((store.root / "LATEST").read_text())
    assert failure["last_checkpoint"] == ckpt_id and ckpt_id < 4
    manifest = json.loads((store.dir_for(ckpt_id) / "manifest.json").read_text())
    assert manifest["id"] == ckpt_id
    assert not (store.dir_for(4) / "manifest.json").exists()    # the interrupted one never committed
    directory = store.dir_for(ckpt_id)
    cfg, data = small_run()
    for layer in range(10):
        torch.load(layer_file(directory, layer), weights_only=True)
    torch.load(head_file(directory), weights_only=True)
    model, aux = build_network(cfg, data)
    updates = load_layers_into(model, aux, directory)
    assert set(updates.values()) == {manifest["global_step"]}
    ref = sequential_reference(max_steps=manifest["global_step"])
    for name, value in ref.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert_no_orphan_workers()
