"""A torch.distributed stand-in for the NCCL path on CPU: a gloo group per thread, and NCCL's lazy pairing.

`gloo_pair()` builds two `ProcessGroupGloo`s (ranks 0 and 1) over one in-process HashStore, one per thread, so
two threads of a test are two ranks without a default process group. `GroupOps` gives DistPath the
`isend`/`irecv` it calls on torch.distributed, on such a group. `LazyPairing` adds what NCCL does and gloo does
not: the communicator of a pair is made at the pair's first send or receive, and making it blocks until the
other rank makes it too (ncclCommInitRank), so a warm-up posted at the wrong moment deadlocks as it would on
GPUs. It gives up after `timeout_s` with a TimeoutError instead of hanging the test.
"""

from __future__ import annotations

import datetime
import threading

import torch.distributed as dist


def gloo_pair(timeout_s: float = 30.0) -> tuple[dist.Store, list]:
    """A HashStore and the two ranks' gloo groups on it (built at once: each waits for the other)."""
    store = dist.HashStore()
    groups: list = [None, None]

    def build(rank: int) -> None:
        groups[rank] = dist.ProcessGroupGloo(dist.PrefixStore("gloo", store), rank, 2,
                                             datetime.timedelta(seconds=timeout_s))

    threads = [threading.Thread(target=build, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return store, groups


class GroupOps:
    """torch.distributed's isend/irecv on one process group of this rank's."""

    def __init__(self, group):
        self.group = group

    def isend(self, tensor, dst: int, tag: int = 0):
        return self.group.send([tensor], dst, tag)

    def irecv(self, tensor, src: int, tag: int = 0):
        return self.group.recv([tensor], src, tag)


class LazyPairing:
    """`ops` whose first operation with each peer first meets that peer's first operation, as NCCL's lazy
    communicator creation does (blocking both until both arrive)."""

    def __init__(self, ops, store: dist.Store, rank: int, timeout_s: float = 10.0):
        self.ops, self.store, self.rank, self.timeout_s = ops, store, rank, timeout_s
        self.paired: set[int] = set()
        self.log: list[str] = []

    def _pair(self, peer: int) -> None:
        if peer in self.paired:
            return
        self.store.set(f"comm/{self.rank}-{peer}", "joined")
        try:
            self.store.wait([f"comm/{peer}-{self.rank}"], datetime.timedelta(seconds=self.timeout_s))
        except RuntimeError as exc:   # the store's timeout (DistStoreError)
            raise TimeoutError(f"rank {self.rank}: rank {peer} never joined the communicator") from exc
        self.paired.add(peer)

    def isend(self, tensor, dst: int, tag: int = 0):
        self._pair(dst)
        self.log.append("isend")
        return self.ops.isend(tensor, dst, tag)

    def irecv(self, tensor, src: int, tag: int = 0):
        self._pair(src)
        self.log.append("irecv")
        return self.ops.irecv(tensor, src, tag)
