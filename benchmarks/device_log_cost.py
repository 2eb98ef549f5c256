"""Critical-path cost of logging one sent message, on CPU with device-free doubles.

Old: encode + host copy into the ReplayLog at once (on a GPU also a stream sync before it). New: DeferredLog
(workers/runtime/device_log.py) only queues the copy; a deferred-copy stream double runs it later, as a GPU side stream
would, and the entry is encoded when it completes. Run: PYTHONPATH=. python3 benchmarks/device_log_cost.py
"""

import time

import torch
from auglocal.workers.links import streams
from auglocal.workers.runtime.device_log import DeferredLog
from auglocal.workers.runtime.replay_log import ReplayLog
from auglocal.workers.wire.messages import Codec, Kind, Message
from auglocal.workers.wire.protocol import TrainMeta

from tests.workers.stream_check import CpuStreams

N = 50


class Deferred(CpuStreams):
    """A stream double whose copies run only when the host waits (an asynchronous side stream)."""

    def __init__(self):
        super().__init__()
        self.queue = []

    def copy_async(self, dst, src, stream):
        self.queue.append((dst, src))

    def query(self, event):
        return False

    def wait_host(self, event):
        while self.queue:
            dst, src = self.queue.pop(0)
            dst.copy_(src)


def main() -> None:
    codec = Codec("r", "s")
    h = torch.randn(128, 16, 32, 32)   # a ResNet-110 stage-1 activation at batch 128: 8 MiB
    msgs = [Message(Kind.TRAIN, "w", 0, i, tensors={"h": h.clone(), "y": torch.arange(128)}, meta=TrainMeta(i, i))
            for i in range(N)]
    old = ReplayLog(1 << 40)
    t = time.perf_counter()
    for i, m in enumerate(msgs):
        old.append(i, codec.encode(m))
    t_old = (time.perf_counter() - t) / N
    with streams.installed(Deferred()):
        log = DeferredLog(ReplayLog(1 << 40), codec)
        t = time.perf_counter()
        for i, m in enumerate(msgs):
            log.append(i, m)
        t_new = (time.perf_counter() - t) / N
        t = time.perf_counter()
        log.stats()
        t_done = (time.perf_counter() - t) / N
    print(f"old _log per message: {t_old * 1e3:.2f} ms; deferred append (critical path): {t_new * 1e3:.3f} ms; "
          f"deferred completion, off the path: {t_done * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
