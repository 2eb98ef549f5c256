"""A worker forked from the launcher's forkserver finds torch._dynamo already imported.

torch imports torch._dynamo the first time an optimizer is built; a worker that did so itself spent about 2.5 s
of its start on it, once per worker, per attempt and per one-worker recovery."""

import sys

import pytest
from auglocal.launch.backends.one_host.processes import forkserver_context


def _exit_with_what_was_preloaded() -> None:
    sys.exit(0 if "torch._dynamo" in sys.modules else 1)


def test_a_forked_worker_finds_torch_dynamo_preloaded():
    child = forkserver_context().Process(target=_exit_with_what_was_preloaded)
    child.start()
    child.join(120)
    assert child.exitcode == 0, "torch._dynamo was not preloaded: every worker imports it when it builds its optimizer"


def test_the_one_host_backend_starts_its_forkserver_before_the_run_is_planned(monkeypatch):
    """train_pipeline warms the backend up first: a plan that fails still finds the forkserver started."""
    from multiprocessing import forkserver

    from auglocal.launch.run import pipeline

    started = []
    monkeypatch.setattr(forkserver, "ensure_running", lambda: started.append("forkserver"))

    def prepare(*args):
        started.append("plan")
        raise RuntimeError("stop here")

    monkeypatch.setattr(pipeline, "prepare_run", prepare)
    with pytest.raises(RuntimeError, match="stop here"):
        pipeline.train_pipeline(None, None, pipeline.PipelineOptions(), out="unused")
    assert started == ["forkserver", "plan"]
