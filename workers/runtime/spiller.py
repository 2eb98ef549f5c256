"""The replay log's background thread: checksums and spill files of kept entries, off the step's path.

A worker keeps every message it sent for replay (workers/runtime/replay_log.py `ReplayLog.keep`) by reference:
the frames the codec made, which nothing writes to after the send (the zero-copy contract of
workers/links/zmq_link.py; a received tensor is a view on its ZeroMQ frame, an output is a fresh tensor that
only the log still holds). What such an entry still needs, a CRC-32 (2.7 ms per 8 MiB on the 2-core test
machine) and, past the memory bound, its spill file, is done here, on another thread: zlib and file writes
release the GIL, so on a machine with a spare core this costs the worker's thread nearly nothing.

An entry waiting here stays in memory (its frames are held) until its file is written and its size recorded:
there is never a moment when it is neither in memory nor on disk, so a replay asked for at any time (the
next worker died) finds every entry, after `drain` waited for the queue. What may wait is bounded
(`max_bytes`): past it, `put` waits, so a disk slower than the pipeline slows the worker instead of growing
its memory. A write that fails (a full disk) is remembered: the next `put` raises it (the worker stops on it
as it did when it wrote in line) and a replay refuses the log (`error`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

#: bytes of entries that may wait for their checksum or spill file before `put` waits (at least one entry)
MAX_PENDING_BYTES = 64 << 20


class Spiller:
    """One daemon thread running `work(entry)` for each entry put, in order; see the module docstring."""

    def __init__(self, work: Callable[[object], None], name: str, max_bytes: int = MAX_PENDING_BYTES):
        self._work = work
        self._name = name
        self.max_bytes = max_bytes
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self.pending_bytes = 0         # of entries put and not yet done
        self.error: OSError | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def put(self, entry, nbytes: int) -> None:
        """Queue `entry` (its `work` runs on the thread); waits while more than `max_bytes` are pending.
        Raises the error of an earlier write that failed."""
        if self.error is not None:
            raise self.error
        with self._cond:
            while self.pending_bytes and self.pending_bytes + nbytes > self.max_bytes and self.error is None:
                self._cond.wait()
            self._queue.append((entry, nbytes))
            self.pending_bytes += nbytes
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"spill-{self._name}", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every entry put so far is done (its checksum computed, its file written or failed)."""
        with self._cond:
            while self.pending_bytes:
                self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                entry, nbytes = self._queue[0]
            try:
                self._work(entry)
            except OSError as err:
                self.error = err
            except BaseException as err:   # a bug: keep it for `put` and the replay rather than lose the thread
                self.error = OSError(f"replay log spill thread failed: {type(err).__name__}: {err}")
            with self._cond:
                self._queue.popleft()
                self.pending_bytes -= nbytes
                self._cond.notify_all()

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
