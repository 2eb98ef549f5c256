"""`--replicas R` in the launcher: the flag, its checks, the R x K placement and the sharded feed.

R copies of the K-worker pipeline run side by side; worker `r * K + k` is stage k of replica r, and its
pipeline is replica r's: the coordinator feeds shard r of every minibatch and test batch to worker r * K
(engine/replicas.py says how a batch is cut), each replica's stages hand on to their own successors, and
only the R replicas of one stage talk, through a reducer (workers/runtime/grad_reducer.py). A failure of any
replica worker ends the attempt: one-worker recovery replays a worker's inputs, which a replica's peers
would need to repeat in lockstep, so with R > 1 every failure takes the whole-restart path (summary.json
says so under `recovery`).
"""

from __future__ import annotations

import argparse
import os

from auglocal.engine.config import RunConfig, UsageError
from auglocal.engine.replicas import shard_sizes, split
from auglocal.launch.run.attempt import Placement
from auglocal.workers.runtime.grad_reducer import ReplicaInfo
from auglocal.workers.wire.messages import Kind, Message


def replicas_value(args: argparse.Namespace) -> int | str:
    """--replicas checked: a number >= 1, or "auto" (exit 2 otherwise)."""
    text = str(getattr(args, "replicas", 1))
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--replicas {text!r}: expected a number >= 1 or auto") from None
    if value < 1:
        raise UsageError(f"--replicas must be >= 1 (1: one pipeline, no data parallelism), got {value}")
    return value


def resolve_replicas(args: argparse.Namespace) -> int:
    """--replicas as a number of replicas (int >= 1).

    `auto` is resolved for a pipeline by launch/run/execution.py (`pipeline_options` asks the planner for the
    R x K layout with the most predicted images/s and writes it back into `args`); what is still "auto" here
    is a sequential run's, which has no devices to plan for."""
    value = replicas_value(args)
    if value == "auto":
        raise UsageError("--sequential --replicas auto: the sequential trainer runs the shard oracle of a given "
                         "number of replicas; give --replicas R (e.g. 2)")
    return value


def check_replicas(cfg: RunConfig, data, replicas: int) -> None:
    """Refuse what R replicas cannot run (exit 2): an empty shard, fp16."""
    if replicas == 1:
        return
    if cfg.precision == "fp16":
        raise UsageError(f"--replicas {replicas}: --precision fp16 keeps a loss scale per module and replica, which "
                         "replicas would have to agree on; use --precision fp32 or bf16")
    bs = cfg.batch_size
    for what, total in (("training", data.train_size), ("test", data.test_size)):
        last = total % bs if total else 0
        for n in (min(bs, total), last):
            if n and n < replicas:
                raise UsageError(f"--replicas {replicas}: a {what} batch of {n} image(s) (--batch-size {bs}, {total} "
                                 f"{what} images) cannot give every replica a shard; use at most --replicas {n}")


def check_fault(fault, stages: int, replicas: int) -> None:
    """A fault on the outgoing link of a replica's last worker could never fire: exit 2, as for the last worker."""
    if replicas > 1 and fault is not None and fault.info.target == "worker" and fault.info.on_link \
            and fault.worker % stages == stages - 1:
        raise UsageError(f"--inject-fault {fault.kind}: worker {fault.worker} is the last one of replica "
                         f"{fault.worker // stages} and has no outgoing link; choose a worker r*{stages}+k with "
                         f"k < {stages - 1}")


def replicate(placement: Placement, replicas: int, devices: list[str], hosts: list[list[int]] | None) -> Placement:
    """The placement of R copies of a K-worker placement: rank r * K + k runs stage k of replica r on
    `devices[r * K + k]`. `hosts`: the host groups of thread workers over all R * K ranks (None: processes)."""
    if replicas == 1:
        return placement
    return Placement(groups=[list(g) for _ in range(replicas) for g in placement.groups],
                     layer_ids=[list(ids) for _ in range(replicas) for ids in placement.layer_ids],
                     devices=list(devices), threads=placement.threads * replicas,
                     input_shapes=placement.input_shapes * replicas if placement.input_shapes else None,
                     hosts=hosts, replicas=replicas)


def stage_of(placement: Placement, rank: int) -> int:
    return rank % placement.stages


def replica_info(placement: Placement, rank: int, folder: str, run_id: str, timeout_s: float) -> dict | None:
    """What worker `rank` is told of its replicas: which one it is, and its stage group (thread reducer when
    every replica of the stage is a thread of one host, else gloo or NCCL over a FileStore in `folder`)."""
    if placement.replicas == 1:
        return None
    k = placement.stages
    stage, index = rank % k, rank // k
    peers = [r * k + stage for r in range(placement.replicas)]
    same_host = placement.hosts is not None and any(set(peers) <= set(g) for g in placement.hosts)
    if same_host:
        kind, group = "thread", f"{run_id}/stage{stage}"
    else:
        kind = "nccl" if all(placement.devices[p].startswith("cuda") for p in peers) else "gloo"
        group = os.path.join(folder, f"replicas-stage{stage}.store")
    return ReplicaInfo(index, placement.replicas, stage, kind, group, timeout_s).to_dict()


def feed_link(coord):
    """The coordinator's link into worker 0; with replicas, into the first worker of every replica, as one."""
    heads = [coord.inboxes[r * coord.stages].sender(coord.codec, curve=coord.curve)
             for r in range(coord.placement.replicas)]
    return heads[0] if len(heads) == 1 else ShardedFeed(heads)


def store_replica(info: dict | None) -> dict | None:
    """Under torchrun the workers share no folder: a stage group rendezvouses in rank 0's store instead
    (workers/runtime/grad_reducer.py `STORE_PREFIX`), and replicas are processes (gloo or NCCL)."""
    if info is None:
        return None
    from auglocal.workers.runtime.grad_reducer import STORE_PREFIX

    kind = info["kind"] if info["kind"] != "thread" else "gloo"
    return {**info, "kind": kind, "group": f"{STORE_PREFIX}{os.path.basename(info['group'])}"}


class ShardedFeed:
    """The coordinator's feed link to R replica pipelines, used as one link: a training or test batch goes out
    as R shards, one per replica; markers go to every replica unchanged. A send that times out on one link
    resumes there at the next call with the same message (the others are not sent twice)."""

    def __init__(self, links: list):
        self.links = links
        self._message: Message | None = None
        self._next = 0

    def _parts(self, message: Message) -> list[Message]:
        if message.kind not in (Kind.TRAIN, Kind.EVAL):
            return [message] * len(self.links)
        shards = {name: split(t, len(self.links)) for name, t in message.tensors.items()}
        return [Message(message.kind, message.sender, message.epoch, message.step, layer=message.layer,
                        tensors={name: parts[r] for name, parts in shards.items()}, meta=message.meta)
                for r in range(len(self.links))]

    def send(self, message: Message, timeout_ms: float) -> None:
        if message is not self._message:
            self._message, self._next, self._pending = message, 0, self._parts(message)
        while self._next < len(self.links):
            self.links[self._next].send(self._pending[self._next], timeout_ms)
            self._next += 1
        self._message = None

    @property
    def in_flight(self) -> int:
        return max(link.in_flight for link in self.links)

    @property
    def on_foreign(self):
        return self.links[0].on_foreign

    @on_foreign.setter
    def on_foreign(self, handler) -> None:
        for link in self.links:
            link.on_foreign = handler

    def close(self) -> None:
        for link in self.links:
            link.close()


def replicas_summary(prepared) -> dict:
    """summary.json's record of the replicas, and which failure path they leave (the module docstring)."""
    placement = prepared.placement
    if placement.replicas == 1:
        return {"replicas": 1}
    return {"replicas": placement.replicas, "stages": placement.stages,
            "recovery": f"all (--recovery {prepared.opts.recovery} asked; with --replicas > 1 a failed worker "
                        "restarts every worker from the last committed checkpoint)"}


def describe_replicas(replicas: int, batch_size: int, stages: int | None) -> str:
    """The dry run's line: R, the workers it makes, and the shards of one minibatch."""
    sizes = sorted(set(shard_sizes(batch_size, replicas)), reverse=True)
    workers = f"{replicas} x {stages} = {replicas * stages} workers (worker r*{stages}+k: stage k of replica r); " \
        if stages else "sequential oracle; "
    return (f"replicas: {replicas}, {workers}each minibatch of {batch_size} in {replicas} shards of "
            f"{'/'.join(map(str, sizes))} images, gradients averaged per local module over the replicas")


def blame_dead_peer(coord, grace_s: float = 2.0) -> None:
    """Before an error report of a replica worker is believed: when a worker dies, its stage's peers fail in
    their next reduction (gloo: connection reset) and may report that before the death shows. Wait up to
    `grace_s` for a dead worker; check_workers then raises WorkerFailed naming it."""
    import time

    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if any(not w.is_alive() for w in coord.workers):
            break
        time.sleep(0.05)
    coord.check_workers()
