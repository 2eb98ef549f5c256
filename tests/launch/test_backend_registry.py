"""The launcher backend registry (launch/backends/registry.py): every entry whole, a broken one refused, and the
attempt loop taking its coordinator from the entry."""

from __future__ import annotations

import dataclasses

import pytest
from auglocal.launch.backends import registry
from auglocal.launch.backends.base import HANDLE_MEMBERS, WorkerHandle, resolve
from auglocal.launch.backends.elastic.coordinator import ElasticCoordinator, RemoteWorker
from auglocal.launch.backends.one_host.processes import start_forkserver
from auglocal.launch.run.coordinator import Coordinator
from auglocal.launch.run.pipeline import PreparedRun


@pytest.mark.parametrize("entry", registry.REGISTRY, ids=lambda e: e.name)
def test_every_entry_has_every_part(entry):
    registry.check_entry(entry)


def test_the_registry_is_whole_and_names_are_unique():
    registry.check_registry(registry.REGISTRY)
    with pytest.raises(ValueError, match="unique"):
        registry.check_registry((*registry.REGISTRY, registry.BY_NAME[registry.ONE_HOST]))


class _NoJoin:
    pid = exitcode = None

    def is_alive(self):
        return True

    def orphaned(self):
        return False

    def stop(self):
        pass


@pytest.mark.parametrize("broken, why", [
    (dict(name=""), "no name"), (dict(summary=" "), "no summary"), (dict(selector=""), "no selector"),
    (dict(doc="docs/no-such-page.md"), "does not exist"), (dict(doc="docs/method.md"), "does not mention"),
    (dict(coordinator="auglocal.launch.run.no_such_module:Coordinator"), "does not import"),
    (dict(coordinator="auglocal.launch.run.coordinator:NoSuchClass"), "does not import"),
    (dict(coordinator="auglocal.launch.run.coordinator"), "does not import"),
    (dict(coordinator="auglocal.launch.run.coordinator:POLL_MS"), "not callable"),
    (dict(handle="auglocal.launch.run.coordinator:POLL_MS"), "not a class"),
    (dict(handle=f"{__name__}:_NoJoin"), r"lacks WorkerHandle members \['join'\]"),
    (dict(warm_up="auglocal.launch.backends.one_host.processes:no_such_function"), "warm_up .* does not import"),
    (dict(warm_up="auglocal.launch.run.coordinator:POLL_MS"), "warm_up .* not callable"),
], ids=lambda b: repr(b) if isinstance(b, str) else next(iter(b)))
def test_an_entry_lacking_a_part_is_refused(broken, why):
    elastic = registry.BY_NAME[registry.ELASTIC]
    with pytest.raises(ValueError, match=f"backend entry .*{why}"):
        registry.check_entry(dataclasses.replace(elastic, **broken))


def test_the_entries_name_today_s_coordinators_and_handles():
    one_host, elastic = registry.BY_NAME[registry.ONE_HOST], registry.BY_NAME[registry.ELASTIC]
    assert one_host.coordinator_factory() is Coordinator
    assert elastic.coordinator_factory() is ElasticCoordinator
    assert resolve(elastic.handle) is RemoteWorker
    assert resolve(one_host.warm_up) is start_forkserver and not elastic.warm_up
    assert isinstance(RemoteWorker(123), WorkerHandle)
    assert set(HANDLE_MEMBERS) == {"pid", "exitcode", "is_alive", "orphaned", "stop", "join"}


def test_a_pipeline_run_uses_the_one_host_backend_unless_told_otherwise():
    defaults = {f.name: f for f in dataclasses.fields(PreparedRun)}
    assert defaults["backend"].default is registry.BY_NAME[registry.ONE_HOST]
    assert defaults["backend_options"].default_factory() == {}
