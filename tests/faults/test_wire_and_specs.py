"""Unit checks behind the fault suite: how a worker classifies a rejected message, and fault specs."""

import pytest
import torch
from auglocal.workers.runtime.faults import Fault, parse_fault
from auglocal.workers.wire.messages import Codec, Kind, Message, MessageError


@pytest.mark.parametrize("run_id, secret", [("run-a", "wrong-secret"), ("run-b", "the-secret")])
def test_message_of_another_run_or_secret_is_rejected_as_foreign(run_id, secret, tmp_path):
    """Receivers count and drop (never train on, never fail over) exactly the `foreign` rejections:
    a wrong secret for this run, or another run's id."""
    with pytest.raises(MessageError) as err:
        Codec("run-a", "the-secret").decode(Codec(run_id, secret).encode(
            Message(Kind.TRAIN, "stranger", 0, 3, tensors={"h": torch.zeros(2, 4)})))
    assert err.value.foreign and err.value.field in ("secret", "run_id")


def test_malformed_message_is_not_taken_for_foreign(tmp_path):
    """A truncated frame from this run's own pipeline is a failure (restart), not a stray to ignore."""
    codec = Codec("run-a", "the-secret")
    frames = codec.encode(Message(Kind.TRAIN, "worker0", 0, 3, tensors={"h": torch.zeros(2, 4)}))
    frames[-1] = bytes(frames[-1])[:8]
    with pytest.raises(MessageError) as err:
        codec.decode(frames)
    assert not err.value.foreign


@pytest.mark.parametrize("text, expected", [
    ("kill:worker=1:step=3", Fault("kill", worker=1, step=3)),
    ("kill-checkpoint:worker=0:checkpoint=2", Fault("kill-checkpoint", worker=0, checkpoint=2)),
    ("slow:worker=1:delay=0.25", Fault("slow", worker=1, delay=0.25)),
    ("foreign:worker=0:step=2:always", Fault("foreign", worker=0, step=2, always=True)),
    ("kill-coordinator:step=4", Fault("kill-coordinator", step=4)),
    ("", None),
])
def test_parse_fault(text, expected):
    assert parse_fault(text) == expected


@pytest.mark.parametrize("text, words", [
    ("explode:worker=1", "unknown fault 'explode'"),
    ("kill:worker=one", "bad fault option .worker=one.*must be a number"),
    ("kill:rank=1", "bad fault option .rank=1.*kill takes worker=..., step=..., always"),
    ("kill:worker=-1:step=3", "worker must be >= 0"),
    ("slow:worker=1", "slow needs delay=SECONDS"),
    ("slow:worker=1:delay=0", "delay must be > 0"),
    ("kill-checkpoint:worker=1:checkpoint=0", "checkpoint must be >= 1"),
    ("kill-coordinator:worker=1:step=4", "kill-coordinator takes step=..."),
    ("kill:worker=1:always=yes", "bad fault option 'always=yes'"),
])
def test_bad_fault_spec_names_the_bad_part(text, words):
    with pytest.raises(ValueError, match=words):
        parse_fault(text)


def test_cli_rejects_bad_fault_with_exit_2(capsys):
    from auglocal.launch.cli import main

    code = main(["--model", "resnet20", "--d", "3", "--dataset", "synthetic", "--input-size", "8",
                 "--inject-fault", "explode:worker=1", "--no-progress", "--gpus", "cpu"])
    assert code == 2
    assert "unknown fault 'explode'" in capsys.readouterr().err
