"""Where the ranks of a torchrun group meet: the torchrun environment, the run secret, and rank 0's store.

Rank 0 hosts a `torch.distributed.TCPStore` of its own (a fresh one every attempt, so no key survives a
restart) at MASTER_ADDR and MASTER_PORT, which torchrun sets to the address of the node that holds rank 0 (its
`--local-addr`) and a free port there, unless `--store-port` names another. That needs
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment: otherwise MASTER_PORT is the agent's own
rendezvous store, whose keys outlive restarts. Rank 0 first publishes the attempt token (its
TORCHELASTIC_RESTART_COUNT, which counts restarts of its own node only, and a random part); every other key
of the attempt carries that token. Everything a rank reads from the store is sealed under the run secret
(workers/wire/sealed.py) or is a signed endpoint record (workers/wire/endpoint_record.py, read with `get_raw` and
verified by its reader), because anyone who reaches the port can write keys.
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from auglocal.engine.config import UsageError
from auglocal.workers.wire.sealed import seal, unseal

SECRET_VAR = "AUGLOCAL_SECRET"
STORE_PORT_VAR = "AUGLOCAL_STORE_PORT"
NODE_ADDR_VAR = "AUGLOCAL_NODE_ADDR"
SHARE_STORE_VAR = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
ATTEMPT_KEY = "attempt"


@dataclass(frozen=True)
class TorchrunEnv:
    """What torchrun tells each process it starts."""

    rank: int
    world_size: int
    local_rank: int
    restart_count: int          # restarts of this node's agent so far (per node: a node that joined later has 0)
    master_addr: str
    master_port: int

    @classmethod
    def from_environ(cls, environ=os.environ) -> TorchrunEnv:
        needed = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        missing = [name for name in needed if name not in environ]
        if missing:
            raise UsageError(f"--elastic runs as one rank of a torchrun group, but {', '.join(missing)} is not set; "
                             "start it with torchrun (see docs/several-machines.md)")
        try:
            return cls(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ["LOCAL_RANK"]),
                       int(environ.get("TORCHELASTIC_RESTART_COUNT", "0")), environ["MASTER_ADDR"],
                       int(environ["MASTER_PORT"]))
        except ValueError:
            raise UsageError("torchrun's RANK, WORLD_SIZE, LOCAL_RANK or MASTER_PORT is not a number") from None


def read_secret(secret_file: str | None, environ=os.environ) -> str:
    """The run secret: from a file only its owner can read (mode 0600), else from $AUGLOCAL_SECRET; never a flag
    (a command line shows in `ps`)."""
    if secret_file:
        path = Path(secret_file)
        try:
            info = path.stat()
            text = path.read_text().strip()
        except OSError as err:
            raise UsageError(f"--secret-file {secret_file}: cannot read it ({err.strerror or err})") from None
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise UsageError(f"--secret-file {secret_file}: mode {stat.S_IMODE(info.st_mode):04o} lets others read "
                             "it; make it private with chmod 600")
        if not text:
            raise UsageError(f"--secret-file {secret_file} is empty; write a random secret into it "
                             "(e.g. python3 -c 'import secrets; print(secrets.token_hex(32))')")
        return text
    if environ.get(SECRET_VAR, "").strip():
        return environ[SECRET_VAR].strip()
    raise UsageError(f"--elastic needs the run secret on every node: --secret-file FILE (mode 0600) or ${SECRET_VAR}")


class RunStore:
    """Rank 0's TCPStore, seen through one attempt's token: sealed records in, verified records out."""

    def __init__(self, store, secret: str, token: str, timeout_s: float):
        self.store, self.secret, self.token, self.timeout_s = store, secret, token, timeout_s

    @classmethod
    def host(cls, port: int, secret: str, restart_count: int, timeout_s: float) -> RunStore:
        """Rank 0: start the store on `port` (all interfaces) and publish a fresh attempt token."""
        from torch.distributed import TCPStore

        try:
            store = TCPStore("0.0.0.0", port, is_master=True, wait_for_workers=False,
                             timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, OSError) as err:
            raise UsageError(f"cannot host the rank-0 store on port {port}: {err} (set {SHARE_STORE_VAR}=1 for "
                             "torchrun, or pick a free --store-port)") from None
        token = f"{restart_count}.{uuid.uuid4().hex[:8]}"
        store.set(ATTEMPT_KEY, seal(secret, token.encode()))
        return cls(store, secret, token, timeout_s)

    @classmethod
    def connect(cls, addr: str, port: int, secret: str, timeout_s: float) -> RunStore:
        """Any other rank: connect to rank 0's store and read the attempt token (refused if not sealed by the
        run secret)."""
        from torch.distributed import TCPStore

        store = TCPStore(addr, port, is_master=False, timeout=timedelta(seconds=timeout_s))
        token = unseal(secret, store.get(ATTEMPT_KEY)).decode()
        return cls(store, secret, token, timeout_s)

    def _key(self, name: str) -> str:
        return f"{self.token}/{name}"

    def put(self, name: str, payload: bytes) -> None:
        """Publish `payload` under this attempt's `name`, sealed."""
        self.store.set(self._key(name), seal(self.secret, payload))

    def put_raw(self, name: str, data: bytes) -> None:
        """Publish bytes that are checked otherwise (a file whose SHA-256 travels in a sealed record)."""
        self.store.set(self._key(name), data)

    def has(self, name: str) -> bool:
        return self.store.check([self._key(name)])

    def wait_for(self, name: str, alive=None, poll_s: float = 0.05) -> None:
        """Wait until `name` is published; TimeoutError after the store's timeout, or once `alive()` is False."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                if self.has(name):
                    return
            except RuntimeError:          # torch's DistNetworkError: the store (rank 0) is gone
                raise TimeoutError(f"rank 0's store is gone while waiting for {name!r}") from None
            if time.monotonic() > deadline or (alive is not None and not alive()):
                raise TimeoutError(f"{name!r} not published in rank 0's store within {self.timeout_s:.0f} s")
            time.sleep(poll_s)

    def get(self, name: str) -> bytes:
        """The verified payload of `name` (waits for it); EndpointRecordError when its seal fails."""
        return unseal(self.secret, self.get_raw(name))

    def get_raw(self, name: str) -> bytes:
        self.wait_for(name)
        return self.store.get(self._key(name))

    def alive(self) -> bool:
        """Whether rank 0 (which hosts the store) still runs this attempt."""
        try:
            return unseal(self.secret, self.store.get(ATTEMPT_KEY)).decode() == self.token
        except Exception:       # the store's own errors (connection reset, timeout) all mean: gone
            return False
