"""Counted MACs persist in the user's cache: a later process reuses them, and never a stale or broken entry."""

import json

import pytest
from auglocal.engine.auxnets import build_aux_nets
from auglocal.engine.models import build_model
from auglocal.engine.planning import costs, layer_costs, mac_cache


@pytest.fixture
def fresh_process(tmp_path, monkeypatch):
    """This process as if just started: an empty in-process memo, a cache folder of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(costs, "_MEMO", {})
    monkeypatch.setattr(costs, "_UNSAVED", {})
    monkeypatch.setattr(costs, "_LOADED", False)
    return tmp_path / "auglocal" / mac_cache.FILE_NAME


def restart(monkeypatch):
    monkeypatch.setattr(costs, "_MEMO", {})
    monkeypatch.setattr(costs, "_LOADED", False)


def network():
    model = build_model("resnet20", num_classes=10)
    return model, build_aux_nets(model, "auglocal", d=2)


def count_calls(monkeypatch) -> list:
    calls = []
    real = costs._counted

    def counting(fn, batch, *convention):
        calls.append(batch)
        return real(fn, batch, *convention)

    monkeypatch.setattr(costs, "_counted", counting)
    return calls


def test_a_later_process_reuses_the_counts_without_running_a_module(fresh_process, monkeypatch):
    model, aux = network()
    first = layer_costs(model, aux)
    entries = json.loads(fresh_process.read_text())["entries"][mac_cache.code_version()]
    assert len(entries) >= 3 and all(macs > 0 for macs, _ in entries.values())
    restart(monkeypatch)
    calls = count_calls(monkeypatch)
    assert layer_costs(model, aux) == first
    assert calls == []   # every block came from the file


def test_counts_of_other_code_or_broken_files_are_never_read(fresh_process, monkeypatch):
    model, aux = network()
    first = layer_costs(model, aux)
    saved = json.loads(fresh_process.read_text())
    entries = saved["entries"][mac_cache.code_version()]
    # another code version (an edited engine file, another torch) files its counts elsewhere: all recounted
    restart(monkeypatch)
    monkeypatch.setattr(mac_cache, "code_version", lambda: "another-version")
    calls = count_calls(monkeypatch)
    assert layer_costs(model, aux) == first and len(calls) == len(entries)
    assert set(json.loads(fresh_process.read_text())["entries"]) == {"another-version"}   # the old set dropped
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(fresh_process.parents[1]))
    # malformed entries are skipped one by one (and recounted), garbage files read as empty
    for i, key in enumerate(entries):
        entries[key] = [-1, None] if i % 2 else ["many", [1]]
    for content in (json.dumps(saved), "\x00garbage{", json.dumps({"format": 99, "entries": saved["entries"]})):
        fresh_process.write_text(content)
        restart(monkeypatch)
        monkeypatch.setattr(costs, "_UNSAVED", {})
        calls = count_calls(monkeypatch)
        assert layer_costs(model, aux) == first and len(calls) == len(entries)
        assert json.loads(fresh_process.read_text())["format"] == mac_cache.FORMAT   # rewritten, readable again


def test_an_unwritable_cache_is_not_an_error(fresh_process, monkeypatch):
    fresh_process.parent.parent.mkdir(parents=True, exist_ok=True)
    fresh_process.parent.write_text("a file where the cache folder should be")
    model, aux = network()
    assert layer_costs(model, aux)[0].primary_macs == 3 * 16 * 9 * 32 * 32


def test_a_damaged_count_that_is_still_valid_json_is_not_read(fresh_process, monkeypatch):
    """A flipped digit leaves valid JSON and a plausible number: the file's checksum refuses it as a whole."""
    model, aux = network()
    first = layer_costs(model, aux)
    saved = json.loads(fresh_process.read_text())
    entries = saved["entries"][mac_cache.code_version()]
    key = next(iter(entries))
    entries[key][0] += 1                       # one count off by one, the file otherwise intact
    fresh_process.write_text(json.dumps(saved))
    restart(monkeypatch)
    calls = count_calls(monkeypatch)
    assert layer_costs(model, aux) == first and len(calls) == len(entries)
