"""A worker forked from the launcher's forkserver finds torch._dynamo already imported.

torch imports torch._dynamo the first time an optimizer is built; a worker that did so itself spent about 2.5 s
of its start on it, once per worker, per attempt and per one-worker recovery."""

import sys

from auglocal.launch.backends.one_host.processes import forkserver_context


def _exit_with_what_was_preloaded() -> None:
    sys.exit(0 if "torch._dynamo" in sys.modules else 1)


def test_a_forked_worker_finds_torch_dynamo_preloaded():
    child = forkserver_context().Process(target=_exit_with_what_was_preloaded)
    child.start()
    child.join(120)
    assert child.exitcode == 0, "torch._dynamo was not preloaded: every worker imports it when it builds its optimizer"
