"""The cuda-ipc path's slot cache on the CPU double of CUDA IPC memory (tests/workers/ipc_double.py).

Two slots of one link share their segment's handle and differ in offset; a slot grown inside the segment can
land at the offset of an earlier, shorter slot. The path's default key (handle, offset, size) reads every
message from its own bytes; the old key (handle alone) and torch's (handle, offset) are injected to show that
the same runs then deliver wrong bytes or refuse a message, so the contract row would catch them.
"""

import shutil
import tempfile

import pytest
import torch
from auglocal.workers.links.paths.cuda_ipc import CudaIpcPath, slot_key
from auglocal.workers.links.paths.oob_link import OobReceiver, OobSender
from auglocal.workers.links.zmq_link import ipc_address
from auglocal.workers.wire.messages import Codec, Kind, Message, MessageError

from tests.workers.ipc_double import CpuIpcMemory

WAIT_MS = 10_000
SAME_SIZE = [64, 64, 64, 64]                 # floats: both slots in one segment, same size
GROWING = [128, 128, 256, 256, 512, 512]     # slot B's last growth lands at offset 0, where slot A began


def handle_only(storage):      # the key before the fix
    return storage[1]


def handle_and_offset(storage):
    return (storage[1], storage[3])


@pytest.fixture
def link():
    directory = tempfile.mkdtemp(prefix="al-ipc-double-")
    made = []

    def make(key=slot_key):
        codec = Codec("run", "secret")
        rx = OobReceiver(ipc_address(f"in{len(made)}", directory), codec, "rx",
                         CudaIpcPath(2, receiving=True, memory=CpuIpcMemory(directory), key=key))
        memory = CpuIpcMemory(directory)
        tx = OobSender(rx.address, codec, CudaIpcPath(2, receiving=False, memory=memory))
        made.append((tx, rx, memory))
        return tx, rx, memory

    yield make
    for tx, rx, memory in made:
        tx.close()
        rx.close()
        memory.close()
    shutil.rmtree(directory, ignore_errors=True)


def deliver(tx, rx, sizes) -> list[bool]:
    """Send one message per size (one at a time); whether each arrived with exactly its bytes."""
    ok = []
    for step, n in enumerate(sizes):
        x = torch.arange(n, dtype=torch.float32) + 1000 * step
        tx.send(Message(Kind.TRAIN, "tx", step=step, tensors={"x": x}), WAIT_MS)
        got = rx.recv(WAIT_MS)
        ok.append(got.step == step and torch.equal(got.tensors["x"], x))
    return ok


def test_two_slots_share_one_handle_at_two_offsets(link):
    tx, rx, memory = link()
    assert all(deliver(tx, rx, SAME_SIZE))
    a, b = tx.path._handles
    assert a[1] == b[1] and a[3] != b[3]    # the case the fix is about really happens in the double
    assert len(memory.segments) == 1


def test_a_slot_grown_inside_its_segment_is_read_whole(link):
    tx, rx, _memory = link()
    assert all(deliver(tx, rx, GROWING))


def test_the_handle_only_cache_reads_slot_1_from_slot_0s_bytes(link):
    tx, rx, _memory = link(key=handle_only)
    assert deliver(tx, rx, SAME_SIZE) == [True, False, True, False]


def test_a_cache_without_the_size_reuses_the_stale_shorter_view(link):
    tx, rx, _memory = link(key=handle_and_offset)
    with pytest.raises(MessageError, match="frame has 512 bytes"):
        deliver(tx, rx, GROWING)
