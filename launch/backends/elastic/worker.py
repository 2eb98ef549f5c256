"""A worker rank under torchrun: fetch its spec from rank 0's store, bind, publish, connect, serve.

The worker first publishes its attempt's CURVE key (signed, launch/backends/elastic/links.py); the spec, the link plan
and the resume files come from rank 0 (launch/backends/elastic/coordinator.py), verified against the run secret and
their
SHA-256. The worker then sets its process up as every worker does (workers/runtime/process_setup.py), on this node's
GPU from the device map (launch/run/devices.py: the coordinator, rank 0, holds none). The inbox binds on this
node's address admitting only its upstream rank's verified key and is published as a signed record; the next
worker's inbox and the coordinator's results inbox are looked up and verified the same way before connecting.
A gloo or nccl link first joins the attempt's process group. The worker watches rank 0's store instead of a
local pid: when it is gone (rank 0 died or the attempt ended), the worker exits with code 1, so torchrun counts
it as failed and restarts the group instead of finishing this node alone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
import tempfile

import torch
from auglocal.launch.backends.elastic.coordinator import RESULTS_WINDOW, spec_from_wire
from auglocal.launch.backends.elastic.links import (
    bind_inbox,
    connect,
    destroy_group,
    inbox_link,
    init_group,
    publish_inbox,
    publish_key,
)
from auglocal.launch.backends.elastic.store import RunStore, TorchrunEnv
from auglocal.launch.run.devices import coordinator_gpu_asked, torchrun_device
from auglocal.workers.runtime.entry import serve
from auglocal.workers.runtime.grad_reducer import use_store
from auglocal.workers.runtime.process_setup import set_up_process
from auglocal.workers.runtime.worker import WorkerLinks
from auglocal.workers.wire.endpoint_record import EndpointRecordError
from auglocal.workers.wire.frame_bounds import inbox_bound
from auglocal.workers.wire.messages import Codec
from auglocal.workers.wire.sealed import codec_secret

EXIT_COORDINATOR_GONE = 1
EXIT_REFUSED = 2


def _fetch_resume_files(store: RunStore, rank: int, files: dict[str, str]) -> str | None:
    """Write the checkpoint files this worker resumes from into a private folder, each checked by SHA-256."""
    if not files:
        return None
    folder = tempfile.mkdtemp(prefix=f"auglocal-resume-w{rank}-")
    for name, digest in files.items():
        data = store.get_raw(f"file/{rank}/{name}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise RuntimeError(f"resume file {name} from rank 0's store fails its SHA-256; refusing to train on it")
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return folder


def run_worker(env: TorchrunEnv, store: RunStore, node_addr: str) -> int:
    """Serve as worker RANK-1 of this attempt; the process's exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is rank 0's to handle, as on one host
    r, secret = env.rank - 1, store.secret
    try:
        return _serve(env, store, node_addr, r, secret)
    except (TimeoutError, torch.distributed.DistError) as err:   # rank 0 went away while this worker started
        print(f"worker {r}: {err}; exiting", file=sys.stderr)
        return EXIT_COORDINATOR_GONE
    except EndpointRecordError as err:      # a record in the store fails its HMAC: never connect to what it names
        print(f"worker {r}: a record in rank 0's store was refused: {err}; exiting", file=sys.stderr)
        return EXIT_REFUSED


def _serve(env: TorchrunEnv, store: RunStore, node_addr: str, r: int, secret: str) -> int:
    keys = publish_key(store, env.rank, node_addr)
    try:
        store.wait_for(f"spec/{r}", alive=store.alive)
        published = spec_from_wire(store.get(f"spec/{r}"))
    except TimeoutError as err:
        raise TimeoutError(f"rank 0 published no spec for it ({err})") from None
    spec, window, plan = published.spec, published.window, published.plan
    if spec.device.startswith("cuda"):                # this node's GPU, from the one device map
        try:
            spec.device = torchrun_device(env.rank, env.local_rank, torch.cuda.device_count(),
                                          coordinator_gpu_asked())
        except ValueError as err:
            print(f"worker {r}: {err}; exiting", file=sys.stderr)
            return EXIT_REFUSED
    set_up_process(spec.threads, spec.malloc, spec.device)   # as worker_main and host_main do
    resume_dir = _fetch_resume_files(store, r, published.resume_files)
    spec.resume_dir, spec.secret = resume_dir, codec_secret(secret, spec.run_id)
    codec = Codec(spec.run_id, spec.secret)
    inbox = links = None
    try:
        if plan.group:
            init_group(store, env.rank, env.world_size, plan.group, store.timeout_s, node_addr)
        if spec.replica is not None:        # replicas of a stage rendezvous in rank 0's store, under this attempt
            use_store(torch.distributed.PrefixStore(f"{store.token}/replicas", store.store))
        inbox = bind_inbox(store, inbox_link(node_addr, plan, r, window), codec, spec.name, keys, [plan.upstream(r)],
                           max_frame=inbox_bound(spec.schema, spec.config))
        store.put(f"pid/{r}", str(os.getpid()).encode())      # for summary.json's worker_pids (on its node)
        publish_inbox(store, f"inbox/{r}", inbox, keys)
        outbox = None if published.last else connect(store, f"inbox/{r + 1}", codec, keys, plan.outbox(r), window,
                                                     src_rank=env.rank, dst_rank=env.rank + 1)
        results = connect(store, "results", codec, keys, plan.results, RESULTS_WINDOW)
        links = WorkerLinks(inbox, outbox, results)
        finished = serve(spec, links, store.alive)
    finally:
        if links is None and inbox is not None:
            inbox.close()
        destroy_group()
        if resume_dir:
            shutil.rmtree(resume_dir, ignore_errors=True)
    return 0 if finished else EXIT_COORDINATOR_GONE

