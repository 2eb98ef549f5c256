"""The user's cache folder (~/.cache/auglocal/) is untrusted input: each poisoned cache of issue 22 is a cache
miss with one warning line naming the file, and the dry run prints exactly the plan it prints without that
file; never a traceback, never "predicted 0.0 images/s" or a MAC count of 1e40.

The caches carry a SHA-256 of their entries, so every poisoned file here is written by the module's own
writer (CacheFile.write): its digest is valid and only the type and range checks can refuse it.
"""

import json

import pytest
from auglocal.engine.planning import costs, mac_cache, timing_cache, user_cache
from auglocal.engine.planning.user_cache import CacheFile, cache_dir
from auglocal.launch.cli import main

FLAGS = ["--model", "resnet20", "--d", "3", "--dataset", "synthetic", "--input-size", "16", "--num-classes", "4",
         "--train-size", "16", "--test-size", "8", "--batch-size", "8", "--workers", "2", "--gpus", "cpu",
         "--dry-run"]


def fresh_process(monkeypatch) -> None:
    """This process as if just started: nothing counted or warned about yet, the cache files read again."""
    monkeypatch.setattr(costs, "_MEMO", {})
    monkeypatch.setattr(costs, "_UNSAVED", {})
    monkeypatch.setattr(costs, "_FROM_FILE", set())
    monkeypatch.setattr(costs, "_LOADED", False)
    monkeypatch.setattr(user_cache, "_warned", set())


def dry_run(monkeypatch, capsys, *extra: str) -> tuple[str, str]:
    fresh_process(monkeypatch)
    assert main([*FLAGS, *extra]) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err, printed.err
    return printed.out, printed.err


@pytest.fixture
def caches(monkeypatch, capsys):
    """Both caches as a clean `--balance time` dry run leaves them (timing faked: real timing takes seconds)."""
    monkeypatch.setattr("auglocal.engine.planning.balance.module_costs_timed",
                        lambda modules, x, y, steps=3, warmup=1, kernels=None, device=None:
                        [0.002 * (1 + i % 3) for i in range(len(modules))])
    dry_run(monkeypatch, capsys, "--balance", "time")
    times, macs = cache_dir() / timing_cache.FILE_NAME, cache_dir() / mac_cache.FILE_NAME
    assert times.is_file() and macs.is_file()
    return times, macs


def entries(path) -> dict:
    return json.loads(path.read_text())["entries"]


def poison(path, fmt: int, change) -> None:
    """Rewrite the cache at `path` with `change(entries)` applied, with a valid digest."""
    content = entries(path)
    change(content)
    CacheFile(path.name, fmt, path).write(content)


def only_entry(content: dict) -> dict:
    assert len(content) == 1
    return next(iter(content.values()))


def set_times(costs_of):
    def change(content):
        only_entry(content)["costs"] = costs_of(only_entry(content)["costs"])
    return change


def set_when(value):
    def change(content):
        only_entry(content)["measured_at"] = value
    return change


def every_count(edit):
    def change(content):
        for count in only_entry(content).values():
            edit(count)
    return change


def first_shape(edit):
    def change(content):
        count = next(c for c in only_entry(content).values() if c[1] and len(c[1]) == 4)
        edit(count[1])
    return change


def deep_json(path) -> None:
    path.write_text("[" * 200_000 + "]" * 200_000)


TIMES = {
    "200,000-deep JSON": deep_json,
    "a cost of inf": set_times(lambda c: [float("inf"), *c[1:]]),
    "a cost of nan": set_times(lambda c: [*c[:-1], float("nan")]),
    "measured_at 1e300": set_when(1e300),
    "measured_at a string": set_when("yesterday"),
    "a cost of 1e6 s per batch": set_times(lambda c: [1e6, *c[1:]]),
    "costs 1e5x apart": set_times(lambda c: [c[0] * 1e5, *c[1:]]),
    "a cost of 0": set_times(lambda c: [0.0, *c[1:]]),
    "costs not a list": set_times(lambda c: {"0": 1.0}),
}
MACS = {
    "a negative output shape": first_shape(lambda shape: shape.__setitem__(0, -1)),
    "MACs of 1e40": every_count(lambda count: count.__setitem__(0, 10**40)),
    "MACs as a float": every_count(lambda count: count.__setitem__(0, 1.5)),
    "a plausible shape of the wrong block": first_shape(lambda shape: shape.__setitem__(1, shape[1] + 1)),
}


@pytest.mark.parametrize("case", TIMES)
def test_a_poisoned_timing_cache_is_a_miss_with_one_warning(case, caches, monkeypatch, capsys):
    times, _ = caches
    cached, _ = dry_run(monkeypatch, capsys)
    assert "module times measured on this machine" in cached      # the clean cache is used
    changed = TIMES[case]
    changed(times) if changed is deep_json else poison(times, timing_cache.FORMAT, changed)
    out, err = dry_run(monkeypatch, capsys)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"auglocal: warning: ignoring the cache file {times} ("), err
    times.unlink()
    without, _ = dry_run(monkeypatch, capsys)
    assert out == without                                          # exactly the plan of no cache at all
    assert "no module times cached" in out and " 0.0 images/s" not in out


@pytest.mark.parametrize("case", MACS)
def test_a_poisoned_mac_cache_is_a_miss_with_one_warning(case, caches, monkeypatch, capsys):
    _, macs = caches
    clean, _ = dry_run(monkeypatch, capsys)
    poison(macs, mac_cache.FORMAT, MACS[case])
    out, err = dry_run(monkeypatch, capsys)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"auglocal: warning: ignoring the cache file {macs} ("), err
    assert out == clean                                            # the counts made afresh
    assert all(mac_cache.parse_count(c) for c in only_entry(entries(macs)).values())   # and saved sane
    _, again = dry_run(monkeypatch, capsys)
    assert again == ""                                             # the rewritten file is trusted again
