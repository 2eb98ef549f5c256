"""Unit checks of one-worker recovery's bookkeeping: report deduplication, the fault kinds that exercise it,
the flags that choose it, and when the coordinator refuses it (falls back to the whole restart)."""

from __future__ import annotations

import pytest
from auglocal.launch.run.recovery import ReportDedupe
from auglocal.workers.runtime.faults import Fault, check_target, parse_fault


def test_reports_of_replayed_steps_count_once_per_rank():
    d = ReportDedupe()
    assert [d.fresh(1, "metrics", 0, s) for s in (0, 1, 2)] == [True] * 3
    # worker 1 restarts from its checkpoint after step 0 and reports steps 1.. again
    assert [d.fresh(1, "metrics", 0, s) for s in (1, 2, 3)] == [False, False, True]
    assert d.fresh(0, "metrics", 0, 1)                      # another rank: its own count
    assert d.fresh(1, "metrics", 1, 0)                      # a later epoch
    assert not d.fresh(1, "metrics", 0, 5)                  # anything before the last counted one is a repeat
    assert d.repeats == 3


def test_kill_seq_is_two_kills_one_after_the_other_and_kill_pair_fires_in_the_coordinator():
    f = parse_fault("kill-seq:worker=1:step=4")
    assert f.as_seen_by(1) == Fault("kill", 1, 4) and f.as_seen_by(2) == Fault("kill", 2, 7)
    assert f.as_seen_by(0) is None and f.as_seen_by(3) is None
    pair = parse_fault("kill-pair:worker=1:step=7")
    assert all(pair.as_seen_by(r) is None for r in range(4))  # no worker fires it: the coordinator kills both
    assert pair.fires("feed", g=7) and not pair.fires("feed", g=6)
    plain = parse_fault("kill:worker=2:step=3")
    assert plain.as_seen_by(2) is plain and plain.as_seen_by(1) is None


@pytest.mark.parametrize("text", ["kill-pair:worker=2:step=1", "kill-seq:worker=2:step=1"])
def test_two_worker_faults_need_a_next_worker(text):
    with pytest.raises(ValueError, match="worker 2 is the last one"):
        check_target(parse_fault(text), 3)


def test_flags_choose_the_recovery_path():
    from auglocal.launch.cli import build_parser, pipeline_options

    base = ["--gpus", "cpu", "--dataset", "synthetic"]
    opts = pipeline_options(build_parser().parse_args(base))
    assert (opts.recovery, opts.replay_log_mb, opts.replay_spill_dir) == ("one", 256.0, None)
    opts = pipeline_options(build_parser().parse_args(
        [*base, "--recovery", "all", "--replay-log-mb", "8", "--replay-spill-dir", "/scratch"]))
    assert (opts.recovery, opts.replay_log_mb, opts.replay_spill_dir) == ("all", 8.0, "/scratch")
    assert pipeline_options(build_parser().parse_args(base)).spares == 1
    assert pipeline_options(build_parser().parse_args([*base, "--spares", "0"])).spares == 0


def test_a_negative_number_of_spares_is_refused():
    from auglocal.engine.config import UsageError
    from auglocal.launch.cli import build_parser, pipeline_options

    with pytest.raises(UsageError, match="--spares must be >= 0, got -1"):
        pipeline_options(build_parser().parse_args(["--gpus", "cpu", "--dataset", "synthetic", "--spares", "-1"]))


def test_a_coordinator_without_control_links_falls_back(tmp_path):
    """Driven in-process (no worker processes, no control inboxes), a failure is re-raised for the whole
    restart, saying why."""
    from auglocal.engine.config import RunConfig, resolve
    from auglocal.engine.data import build_dataset
    from auglocal.launch.run.coordinator import AttemptOptions, Coordinator, Placement, WorkerFailed
    from auglocal.launch.run.progress import EpochTracker

    data = build_dataset("synthetic", seed=1, input_size=8, num_classes=4, train_size=16, test_size=8)
    cfg = resolve(RunConfig(model="resnet20", d=3, dataset="synthetic", epochs=1, batch_size=4, input_size=8,
                            num_classes=4), data)
    placement = Placement(groups=[[0, 1], [2, 3]], layer_ids=[[0, 1], [2, 3, 4]], devices=["cpu", "cpu"],
                          threads=[1, 1])
    tracker = EpochTracker(cfg, 4, 2, 2, lambda r: None, lambda r: None, lambda: 0)
    coord = Coordinator(cfg, data, placement, str(tmp_path), needs_input=[False] * 4,
                        opts=AttemptOptions(recovery="one"), store=None, tracker=tracker)
    err = WorkerFailed(1, [2, 3, 4], "died")
    with pytest.raises(WorkerFailed) as raised:
        coord.recovery.recover(err)
    assert raised.value is err and err.fallback == "no control links (a coordinator driven in-process)"
    coord.opts.recovery = "all"
    with pytest.raises(WorkerFailed):
        coord.recovery.recover(err)
    assert err.fallback == "--recovery all"
    coord.shutdown()
