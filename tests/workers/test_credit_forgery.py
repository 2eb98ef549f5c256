"""Issue 22 item 7: bytes written into a sender's credit FIFO by someone other than its receiver never widen the
window: they are refused and counted (Sender.rejected, and on_foreign, which a worker reports to the
coordinator like a stranger's message), and in_flight stays what really is unconsumed. A credit beyond the
window (no message in flight) is refused and counted too."""


import pytest
from auglocal.workers.links.zmq_link import Receiver, Sender

from tests.workers.test_credit_pipe import CODEC, WAIT_MS, address, train  # noqa: F401  (fixture)


@pytest.mark.parametrize("forged", [b"\x01", b"\x01\x01\x01", b"\x01" * 8, b"forged credits\n" * 5])
def test_forged_bytes_in_the_credit_fifo_do_not_widen_the_window(forged, address):  # noqa: F811
    seen = []
    with Receiver(address, CODEC, "w1", window=2) as receiver, Sender(address, CODEC, window=2) as sender:
        sender.on_foreign = seen.append
        sender.send(train(0), WAIT_MS)
        sender.send(train(1), WAIT_MS)                # the receiver is stopped: the window is full
        with open(sender.credit_pipe_path, "wb", buffering=0) as fifo:
            fifo.write(forged)
        with pytest.raises(TimeoutError, match="2 of 2"):
            sender.send(train(2), 300)                # the window holds: no third message in flight
        assert sender.in_flight == 2
        assert receiver.recv(WAIT_MS).step == 0       # a real credit still counts, after the foreign bytes
        sender.send(train(2), WAIT_MS)
        assert [receiver.recv(WAIT_MS).step for _ in range(2)] == [1, 2]
        sender.wait_all(WAIT_MS)
        assert sender.in_flight == 0
        assert sender.rejected == 1 and len(seen) == 1, seen     # one foreign write, counted once
        assert seen[0].foreign and "no credit of this link" in str(seen[0])


def test_a_credit_beyond_the_window_is_refused_and_counted(address):  # noqa: F811
    seen = []
    with Receiver(address, CODEC, "w1", window=1) as receiver, Sender(address, CODEC, window=1) as sender:
        sender.on_foreign = seen.append
        sender.send(train(0), WAIT_MS)
        receiver.recv(WAIT_MS)
        sender.wait_all(WAIT_MS)
        sender._credited()                            # what a credit with nothing in flight does
        assert sender.in_flight == 0 and sender.rejected == 1
        assert "beyond the window" in str(seen[0])
