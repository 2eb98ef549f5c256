"""Layer files shipped over the results link arrive byte for byte, and anything off is refused."""

import dataclasses

import pytest
import torch
from auglocal.workers.runtime import layer_shipping
from auglocal.workers.runtime.layer_shipping import LayerFileSink, layer_file_messages
from auglocal.workers.wire.messages import Codec
from auglocal.workers.wire.protocol import Route, validate


def write_files(folder, sizes):
    for name, size in sizes.items():
        (folder / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))


def test_files_arrive_whole_through_the_codec_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(layer_shipping, "CHUNK_BYTES", 1000)
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    write_files(src, {"layer_000.pt": 2500, "layer_001.pt": 1000, "head.pt": 7, "notes.txt": 5})
    codec = Codec("run", "secret")
    sink = LayerFileSink()
    sink.allow(dest)
    messages = list(layer_file_messages("worker1", str(dest), src))
    assert len(messages) == 3 + 1 + 1               # 2500 bytes in 3 chunks; notes.txt is not a layer file
    for msg in messages:
        sink.receive(validate(codec.decode(codec.encode(msg)), Route.REPORT))
    assert sorted(p.name for p in dest.iterdir()) == ["head.pt", "layer_000.pt", "layer_001.pt"]
    for name in ("head.pt", "layer_000.pt", "layer_001.pt"):
        assert (dest / name).read_bytes() == (src / name).read_bytes()
    assert sink.incomplete(dest) == []


def one_message(tmp_path, **change):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    write_files(src, {"layer_003.pt": 300})
    msg = next(layer_file_messages("worker0", str(tmp_path / "dest"), src))
    if change:
        msg.meta = dataclasses.replace(msg.meta, **change)
    return msg


@pytest.mark.parametrize("change, error", [
    ({"dir": "/etc"}, "not writing"),
    ({"name": "../../evil.pt"}, "not layer_NNN.pt"),
    ({"offset": 10}, "does not follow"),
    ({"size": 100}, "does not follow"),
    ({"sha256": "0" * 64}, "SHA-256"),
])
def test_a_chunk_that_does_not_fit_is_refused(tmp_path, change, error):
    sink = LayerFileSink()
    sink.allow(tmp_path / "dest")
    with pytest.raises(ValueError, match=error):
        sink.receive(one_message(tmp_path, **change))
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_a_file_begun_but_not_finished_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(layer_shipping, "CHUNK_BYTES", 100)
    msg = one_message(tmp_path)
    sink = LayerFileSink()
    sink.allow(tmp_path / "dest")
    assert sink.receive(msg) is None
    assert sink.incomplete(tmp_path / "dest") == ["layer_003.pt"]


def test_a_chunk_of_another_dtype_is_refused(tmp_path):
    msg = one_message(tmp_path)
    msg.tensors["data"] = torch.zeros(75, dtype=torch.int32)
    sink = LayerFileSink()
    sink.allow(tmp_path / "dest")
    with pytest.raises(ValueError, match="uint8"):
        sink.receive(msg)
