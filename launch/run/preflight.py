"""Every check a run can fail that needs no run folder, done before the folder is claimed.

A run refused for bad input must leave nothing behind: no run.lock, no runtime.json, no socket folder. What
can be known in advance is therefore checked here, before `claim_run_folder`: the socket root, the data set
(a folder that is a file, a damaged CIFAR batch, an image that does not decode, a synthetic set too big for
memory), a --workers count the network cannot fill, a fault no worker could fire, and an --out the user may
not write. What only shows later is undone by the claim itself (launch/run/run_dir.py, RunClaim).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from auglocal.engine.config import RunConfig, UsageError, build_data, build_network, resolve


def preflight(args: argparse.Namespace, cfg: RunConfig, opts, data=None):
    """The data set, built and checked file by file (ImageNet images decoded once), with cfg resolved against
    it; raises UsageError (exit 2, one line) for whatever would fail the run before it starts. `opts`: the
    PipelineOptions of a pipelined run, None for --sequential; `data`: a DataSource built already (a user's
    Dataset, read and checked by auglocal.train), else --dataset's is built here."""
    check_out(args.out)
    if opts is not None:
        from auglocal.launch.backends.one_host.sockets import check_socket_root
        from auglocal.launch.run.transport_choice import binds_ipc_sockets

        check_socket_root(ipc=binds_ipc_sockets(opts.transport, getattr(args, "elastic", False)))
    if data is None:
        data = build_data(cfg, check_files=True)
    resolve(cfg, data)
    if opts is not None and not getattr(args, "elastic", False):    # torchrun: the group's size decides (elastic.py)
        check_workers(cfg, data, opts)
    return data


def check_out(out: str | None) -> None:
    """--out must be a folder this user may write, or a new one in such a folder: else exit 2 now (a read-only
    --out was an OSError, exit 1, once the claim tried to write there)."""
    if not out:
        return
    path = Path(out).expanduser().absolute()
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        what = "that folder" if existing == path else f"{existing}, where it would be made,"
        raise UsageError(f"--out {out}: {what} is not writable by this user; choose another --out")


def check_workers(cfg: RunConfig, data, opts) -> None:
    """A --workers count above the network's local modules, or a fault aimed past the last worker: exit 2
    now (it was found by the planner, after the claim). Builds the network only for a numeric --workers."""
    if opts.workers in ("auto", "layer") and opts.fault is None:
        return
    from auglocal.engine.local_module import build_local_modules
    from auglocal.launch.run.pipeline import check_fault_target, number_of_workers

    model, aux = build_network(cfg, data)
    k = number_of_workers(opts.workers, len(build_local_modules(model, aux)), opts.gpus or [],
                          opts.streams_per_gpu)
    check_fault_target(opts.fault, k * opts.replicas)     # --replicas R: R x K workers
    from auglocal.launch.run.replicas import check_fault

    check_fault(opts.fault, k, opts.replicas)
