"""The one set-up of every process that runs pipeline workers: signals, allocator, threads, determinism, device.

Three entry points start such a process: a worker process (`auglocal.workers.runtime.entry.worker_main`), a thread host
(`auglocal.workers.runtime.host.host_main`) and a worker rank under torchrun
(`auglocal.launch.backends.elastic.worker.run_worker`). Each used to
set these its own way and they drifted (the elastic rank applied no determinism and no OpenMP setting, none
but the thread host selected its GPU), so a worker behaved differently depending on how it was started. They
all call `set_up_process` now, before they open a link or build a stage.

Why each step:
- SIGINT is ignored: Ctrl-C is the coordinator's to handle, and it stops the workers itself.
- `malloc='return'` makes glibc serve large blocks by mmap so freed activations go back to the OS.
- `torch.set_num_threads` (and OMP_NUM_THREADS for anything the process starts) fixes intra-op threads.
- With AUGLOCAL_DETERMINISTIC=1, deterministic algorithms only (the GPU parity check). cuBLAS reads
  CUBLAS_WORKSPACE_CONFIG when it creates its handle, at the first GEMM, and without it raises there under
  deterministic algorithms: so it is set here, before any GEMM, unless the caller chose a value.
- `torch.cuda.set_device`: the CUDA context, NCCL communicators and CUDA IPC handles of the process go to the
  current device; without it they all land on GPU 0, whatever the worker's device.
"""

from __future__ import annotations

import ctypes
import os
import signal

import torch

DETERMINISTIC_VAR = "AUGLOCAL_DETERMINISTIC"
CUBLAS_VAR = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = ":4096:8"     # one of the two settings cuBLAS documents as deterministic
_M_MMAP_THRESHOLD = -3               # glibc mallopt parameter


def return_freed_memory() -> None:
    """Tell glibc to serve large blocks by mmap so freed activations go back to the OS (see README)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 65536)
    except (OSError, AttributeError):
        pass


def determinism_asked(environ=os.environ) -> bool:
    """AUGLOCAL_DETERMINISTIC=1: the run must use deterministic algorithms only."""
    return environ.get(DETERMINISTIC_VAR) == "1"


def apply_determinism(environ=os.environ) -> bool:
    """With AUGLOCAL_DETERMINISTIC=1, set CUBLAS_WORKSPACE_CONFIG (unless set) and turn on torch's deterministic
    algorithms; True when it did. Call it before the process's first GEMM."""
    if not determinism_asked(environ):
        return False
    environ.setdefault(CUBLAS_VAR, CUBLAS_DETERMINISTIC)
    torch.use_deterministic_algorithms(True)
    return True


def select_device(device: str) -> None:
    """Make a CUDA `device` this thread's current one (a no-op for the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))


def set_up_process(threads: int, malloc: str = "keep", device: str = "cpu") -> None:
    """Everything a worker process sets once, before it opens a link or builds a stage (see the module
    docstring): call it from the process's main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if malloc == "return":
        return_freed_memory()
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    apply_determinism()
    select_device(device)
