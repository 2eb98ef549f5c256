"""Layer files over the results link: how a worker without the run folder hands its state to the coordinator.

On several machines (launch/backends/elastic/) only the coordinator's machine holds the run folder. A worker then
writes its layer files (workers/runtime/layer_files.py, the same bytes as on one host) into a private temporary
folder and sends each file in chunks as `layer_file` reports; the coordinator checks every chunk against the
folders it expects, the file names the format allows, the offsets and the file's SHA-256, and writes the file
atomically when it is whole. The reports travel on the same link before the checkpoint acknowledgement (or the
stop report), so a checkpoint is complete on disk when it is acknowledged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from auglocal.engine.atomic import atomic_write_bytes
from auglocal.workers.wire.frame_bounds import CHUNK_BYTES
from auglocal.workers.wire.messages import Kind, Message
from auglocal.workers.wire.protocol import LayerFileMeta

LAYER_FILE_NAME = re.compile(r"layer_\d{3}\.pt|head\.pt")


def layer_file_messages(sender: str, dest: str, local_dir: str | Path) -> Iterator[Message]:
    """The `layer_file` reports that carry every layer file in `local_dir` to the coordinator's folder `dest`."""
    for path in sorted(Path(local_dir).iterdir()):
        if not LAYER_FILE_NAME.fullmatch(path.name):
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        for offset in range(0, max(len(data), 1), CHUNK_BYTES):
            piece = bytearray(data[offset:offset + CHUNK_BYTES])
            chunk = torch.frombuffer(piece, dtype=torch.uint8) if piece else torch.empty(0, dtype=torch.uint8)
            yield Message(Kind.LAYER_FILE, sender, tensors={"data": chunk},
                          meta=LayerFileMeta(dest, path.name, offset, len(data), digest))


class LayerFileSink:
    """The coordinator's end: reassembles shipped layer files into the folders it has allowed."""

    def __init__(self) -> None:
        self.allowed: set[str] = set()
        self.partial: dict[tuple[str, str], bytearray] = {}

    def allow(self, directory: str | Path) -> None:
        """Accept files for `directory` (a checkpoint being written, or the run's final layers folder)."""
        self.allowed.add(str(directory))

    def incomplete(self, directory: str | Path) -> list[str]:
        """Files of `directory` begun but not finished."""
        return sorted(name for d, name in self.partial if d == str(directory))

    def receive(self, msg: Message) -> str | None:
        """Take one chunk; returns the file's path once it is whole and written. ValueError says what was wrong."""
        meta: LayerFileMeta = msg.meta
        data = msg.tensors["data"]
        if meta.dir not in self.allowed:
            raise ValueError(f"layer file {meta.name!r} for {meta.dir!r}, a folder this run is not writing")
        if not LAYER_FILE_NAME.fullmatch(meta.name):
            raise ValueError(f"layer file name {meta.name!r} is not layer_NNN.pt or head.pt")
        if data.dtype != torch.uint8 or data.dim() != 1:
            raise ValueError(f"layer file chunk is {data.dtype} of shape {tuple(data.shape)}, expected 1-D uint8")
        key = (meta.dir, meta.name)
        buf = self.partial.setdefault(key, bytearray())
        if meta.offset != len(buf) or meta.offset + data.numel() > meta.size or meta.size < 0:
            del self.partial[key]
            raise ValueError(f"chunk of {meta.name} at offset {meta.offset} (+{data.numel()} bytes) does not follow "
                             f"the {len(buf)} bytes received of {meta.size}")
        buf += data.numpy().tobytes()
        if len(buf) < meta.size:
            return None
        del self.partial[key]
        if hashlib.sha256(buf).hexdigest() != meta.sha256:
            raise ValueError(f"{meta.name} arrived whole but fails its SHA-256 (damaged on the way)")
        path = Path(meta.dir) / meta.name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, bytes(buf))
        return str(path)
