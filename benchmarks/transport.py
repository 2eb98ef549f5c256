"""Transport benchmark: every link transport's 16 KB latency and 8 MB bandwidth, against a memory copy.

Run from the repository root (about a minute on CPU):

    python -m benchmarks.transport --out benchmarks/results/transport.md

Transports: ipc, tcp, curve (tcp + CurveZMQ), gloo (tensor bytes by torch.distributed over a 2-process
group) and, with a GPU, cuda-ipc (one GPU) and nccl (two GPUs); `--transports` picks some. The CURVE
overhead is reported as curve/tcp latency and tcp/curve bandwidth ratios. For each transport a peer process
(started with 'spawn') binds a Receiver and connects a Sender back to this process, as a downstream worker
would. Latency is a ping-pong of one 16 KB float32 tensor: half the round trip, median and
90th percentile over many. Bandwidth streams 8 MB float32 activation tensors through one credit-windowed link
and counts the time until the peer has consumed the last one. The floor of the per-hop cost is bare pyzmq
with the same socket types (ROUTER in, DEALER out) moving the same bytes without codec, validation or
credits (its bandwidth run keeps 2 messages in flight with a tiny acknowledgement each); the ceiling of
bandwidth is a plain in-process copy of the same bytes (torch.clone, numpy.copy), single-threaded like the
workers. Targets (issue 10, quiet machine): ipc 16 KB one-way median <= 100 us, p90 <= 300 us.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
import zmq
from auglocal.workers.links import registry
from auglocal.workers.links.curve import CurveKeyPair, stop_authenticator
from auglocal.workers.links.link import Link
from auglocal.workers.links.zmq_link import Receiver, Sender, ipc_address, tcp_address
from auglocal.workers.wire.messages import Codec, Kind, Message

from benchmarks.memory import cpu_model

SMALL_BYTES = 16 * 1024
LARGE_BYTES = 8 * 1024 * 1024
WAIT_MS = 60_000



@dataclass(frozen=True)
class Wiring:
    """What both processes need to open one transport's link pair (keys are made here: a benchmark's both
    ends are ours, so the parent hands the peer its key pair instead of exchanging signed records)."""

    transport: str
    window: int
    keys: tuple[CurveKeyPair, CurveKeyPair] | tuple[None, None] = (None, None)
    store: str | None = None

    @property
    def entry(self) -> registry.Transport:
        return registry.BY_NAME[self.transport]

    def link(self, address: str, src: int, dst: int, server: CurveKeyPair | None = None) -> Link:
        ranks = {"src_rank": src, "dst_rank": dst} if self.entry.process_group else {}
        return Link(address, self.window, self.transport, server_key=server and server.public.decode(),
                    tag=10 + src, **ranks)

    def address(self, name: str, directory: str) -> str:
        return tcp_address() if self.entry.scheme == "tcp" else ipc_address(name, directory)

    def device(self, rank: int) -> torch.device:
        if self.entry.device != registry.CUDA:
            return torch.device("cpu")
        return torch.device("cuda", rank if self.entry.gpus > 1 else 0)   # one GPU per end where it needs two

    def join_group(self, rank: int) -> None:
        if self.store:
            import torch.distributed as dist

            dist.init_process_group(self.entry.group_backend, store=dist.FileStore(self.store, 2), rank=rank,
                                    world_size=2)
        if self.entry.device == registry.CUDA:
            torch.cuda.set_device(self.device(rank))

    def leave_group(self) -> None:
        if self.store:
            import torch.distributed as dist

            dist.destroy_process_group()


def peer(parent_address: str, wiring: Wiring, run_id: str, secret: str) -> None:
    """The other worker: announce its inbox, echo messages flagged 'echo', swallow the rest, stop on order."""
    torch.set_num_threads(1)
    wiring.join_group(1)
    codec = Codec(run_id, secret)
    parent_keys, keys = wiring.keys
    directory = tempfile.mkdtemp(prefix="al-bench-")
    try:
        with (
            wiring.link(wiring.address("peer", directory), 0, 1).receiver(codec, "peer", curve=keys) as inbox,
            wiring.link(parent_address, 1, 0, parent_keys).sender(codec, curve=keys) as outbox,
        ):
            if inbox.allowed is not None:
                inbox.allowed.allow(parent_keys.public)
            outbox.send(Message(Kind.STOP, "peer", meta={"address": inbox.address}), WAIT_MS)
            while True:
                message = inbox.recv(WAIT_MS)
                if message.kind == Kind.STOP and message.meta.get("command") == "stop":
                    break
                if message.meta.get("echo"):
                    outbox.send(Message(Kind.METRICS, "peer", step=message.step, tensors=message.tensors), WAIT_MS)
            outbox.wait_all(WAIT_MS)
    finally:
        wiring.leave_group()
        shutil.rmtree(directory, ignore_errors=True)


def measure_link(transport: str, window: int, round_trips: int, messages: int) -> dict[str, float]:
    """Latency and bandwidth of one transport's links between this process and a spawned peer.

    A tcp inbox binds before the peer starts (its port is known only then); a gloo/nccl inbox binds after
    the process group exists (its tensor path needs it), at an ipc path the peer already knows.
    """
    run_id, secret = "bench", secrets.token_hex(16)
    codec = Codec(run_id, secret)
    directory = tempfile.mkdtemp(prefix="al-bench-")
    entry = registry.BY_NAME[transport]
    keys = (CurveKeyPair.generate(), CurveKeyPair.generate()) if entry.curve else (None, None)
    store = os.path.join(directory, "store") if entry.process_group else None
    wiring = Wiring(transport, window, keys, store)
    zmq_context = zmq.Context()
    child = None

    def bind(address: str) -> Receiver:
        inbox = wiring.link(address, 1, 0).receiver(codec, "parent", curve=keys[0], context=zmq_context)
        if inbox.allowed is not None:
            inbox.allowed.allow(keys[1].public)
        return inbox

    try:
        with contextlib.ExitStack() as ends:
            address = wiring.address("parent", directory)
            inbox = None if store else ends.enter_context(bind(address))
            child = multiprocessing.get_context("spawn").Process(
                target=peer, args=(inbox.address if inbox else address, wiring, run_id, secret))
            child.start()
            wiring.join_group(0)
            ends.callback(wiring.leave_group)
            inbox = inbox or ends.enter_context(bind(address))
            hello = inbox.recv(WAIT_MS)
            outbox = ends.enter_context(wiring.link(hello.meta["address"], 0, 1, keys[1]).sender(
                codec, curve=keys[0], context=zmq_context))
            device = wiring.device(0)
            result = _latency(inbox, outbox, round_trips, device)
            result.update(_bandwidth(outbox, messages, device))
            outbox.send(Message(Kind.STOP, "parent", meta={"command": "stop"}), WAIT_MS)
            outbox.wait_all(WAIT_MS)
            child.join(WAIT_MS / 1000)
        if child.exitcode != 0:
            raise RuntimeError(f"benchmark peer exited with code {child.exitcode}")
    finally:
        if child is not None and child.is_alive():
            child.kill()
        stop_authenticator(zmq_context)
        zmq_context.destroy(linger=0)
        shutil.rmtree(directory, ignore_errors=True)
    return result


def _latency(inbox: Receiver, outbox: Sender, round_trips: int, device: torch.device) -> dict[str, float]:
    tensor = torch.randn(SMALL_BYTES // 4, device=device)
    one_way = []
    for step in range(round_trips + round_trips // 10):
        start = time.perf_counter()
        outbox.send(Message(Kind.TRAIN, "parent", step=step, tensors={"x": tensor}, meta={"echo": True}), WAIT_MS)
        reply = inbox.recv(WAIT_MS)
        one_way.append((time.perf_counter() - start) / 2)
        assert reply.step == step and reply.tensors["x"].shape == tensor.shape
    one_way = one_way[round_trips // 10 :]  # drop warm-up
    deciles = statistics.quantiles(one_way, n=10)
    return {"lat_median_us": statistics.median(one_way) * 1e6, "lat_p90_us": deciles[-1] * 1e6}


def _bandwidth(outbox: Sender, messages: int, device: torch.device, repeats: int = 3) -> dict[str, float]:
    """Median over `repeats` runs of `messages` sends: a shared machine makes single runs noisy."""
    tensor = torch.randn(LARGE_BYTES // 4, device=device)
    for step in range(5):  # warm-up: connection buffers, page faults on the receiving side
        outbox.send(Message(Kind.TRAIN, "parent", step=step, tensors={"x": tensor}), WAIT_MS)
    outbox.wait_all(WAIT_MS)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for step in range(messages):
            outbox.send(Message(Kind.TRAIN, "parent", step=step, tensors={"x": tensor}), WAIT_MS)
        outbox.wait_all(WAIT_MS)
        rates.append(messages / (time.perf_counter() - start))
    rate = statistics.median(rates)
    return {"msgs_per_s": rate, "gb_per_s": rate * LARGE_BYTES / 1e9}


def plain_peer(parent_address: str, transport: str) -> None:
    """The plain-pyzmq peer: same socket types (ROUTER in, DEALER out), no codec, no credits, no checks."""
    context = zmq.Context()
    directory = tempfile.mkdtemp(prefix="al-bench-") if transport == "ipc" else None
    inbox = context.socket(zmq.ROUTER)
    inbox.bind(ipc_address("peer", directory) if directory else "tcp://127.0.0.1:*")
    outbox = context.socket(zmq.DEALER)
    outbox.connect(parent_address)
    try:
        outbox.send(inbox.getsockopt(zmq.LAST_ENDPOINT))
        while True:
            _, *frames = inbox.recv_multipart(copy=False)
            if frames[0].bytes == b"stop":
                break
            if frames[0].bytes == b"echo":
                outbox.send_multipart(frames, copy=False)
            else:
                outbox.send(b"done")
    finally:
        context.destroy(linger=0)
        if directory:
            shutil.rmtree(directory, ignore_errors=True)


def measure_plain(transport: str, round_trips: int, messages: int) -> dict[str, float]:
    """The same ping-pong and stream with bare pyzmq sockets: the floor this transport is judged against.

    Bandwidth sends 8 MB frames with a window of 2 (the peer acknowledges each with a tiny message), so the
    figure is comparable with the credit-windowed link.
    """
    context = zmq.Context()
    directory = tempfile.mkdtemp(prefix="al-bench-")
    inbox = context.socket(zmq.ROUTER)
    inbox.bind(ipc_address("parent", directory) if transport == "ipc" else "tcp://127.0.0.1:*")
    child = multiprocessing.get_context("spawn").Process(
        target=plain_peer, args=(inbox.getsockopt(zmq.LAST_ENDPOINT).decode(), transport))
    child.start()
    try:
        _, address = inbox.recv_multipart()
        outbox = context.socket(zmq.DEALER)
        outbox.connect(address.decode())
        small = torch.randn(SMALL_BYTES // 4).numpy()
        one_way = []
        for _ in range(round_trips + round_trips // 10):
            start = time.perf_counter()
            outbox.send_multipart([b"echo", small], copy=False)
            inbox.recv_multipart(copy=False)
            one_way.append((time.perf_counter() - start) / 2)
        one_way = one_way[round_trips // 10 :]
        large = torch.randn(LARGE_BYTES // 4).numpy()
        rates = []
        for run in range(4):   # the first run warms up
            start = time.perf_counter()
            pending = 0
            for _ in range(messages):
                if pending == 2:
                    inbox.recv_multipart()
                    pending -= 1
                outbox.send_multipart([b"data", large], copy=False)
                pending += 1
            for _ in range(pending):
                inbox.recv_multipart()
            if run:
                rates.append(messages / (time.perf_counter() - start))
        outbox.send(b"stop")
        child.join(WAIT_MS / 1000)
    finally:
        if child.is_alive():
            child.kill()
        context.destroy(linger=0)
        shutil.rmtree(directory, ignore_errors=True)
    rate = statistics.median(rates)
    return {"lat_median_us": statistics.median(one_way) * 1e6,
            "lat_p90_us": statistics.quantiles(one_way, n=10)[-1] * 1e6,
            "msgs_per_s": rate, "gb_per_s": rate * LARGE_BYTES / 1e9}


def measure_copy(reps: int) -> dict[str, dict[str, float]]:
    """The ceiling: copying the same bytes inside one process, with torch.clone and numpy.copy."""
    results = {}
    for label, copy in (("torch.clone", torch.Tensor.clone), ("numpy.copy", np.copy)):
        timings = {}
        for nbytes in (SMALL_BYTES, LARGE_BYTES):
            source = torch.randn(nbytes // 4)
            source = source.numpy() if label == "numpy.copy" else source
            for _ in range(10):
                copy(source)
            samples = []
            for _ in range(reps):
                start = time.perf_counter()
                copy(source)
                samples.append(time.perf_counter() - start)
            timings[nbytes] = statistics.median(samples)
        results[label] = {
            "lat_median_us": timings[SMALL_BYTES] * 1e6,
            "msgs_per_s": 1 / timings[LARGE_BYTES],
            "gb_per_s": LARGE_BYTES / timings[LARGE_BYTES] / 1e9,
        }
    return results


ALL_TRANSPORTS = registry.BY_FEWEST_GPUS   # CPU transports first, then by the GPUs each needs
#: the plain ZeroMQ transports, each measured beside a bare-pyzmq floor of the same scheme
PLAIN_FLOORS = tuple(name for name in ALL_TRANSPORTS
                     if not registry.BY_NAME[name].out_of_band and not registry.BY_NAME[name].curve)


def default_transports() -> list[str]:
    """Every transport this machine can run: the GPU ones need one GPU (cuda-ipc) or two (nccl)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [name for name in ALL_TRANSPORTS if registry.BY_NAME[name].gpus <= gpus]


def describe_machine() -> list[str]:
    """CPU model, core counts, load and library versions: the figures mean nothing without them."""
    model = cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"CPU: {model}; {os.cpu_count()} logical cores, {usable} usable; load average {load}",
        f"Python {platform.python_version()}, torch {torch.__version__}, pyzmq {zmq.pyzmq_version()}, "
        f"libzmq {zmq.zmq_version()}, numpy {np.__version__}, {platform.system()} {platform.release()}",
    ]


def format_table(rows: dict[str, dict[str, float]], window: int, machine: list[str]) -> str:
    """The results as a Markdown page (also readable as plain text)."""
    lines = [
        "# Transport benchmark",
        "",
        *[f"- {line}" for line in machine],
        f"- Two processes (spawn), one link each way, credit window {window}; torch single-threaded.",
        f"- Command: `python -m benchmarks.transport {' '.join(sys.argv[1:])}`",
        "",
        "| path | 16 KB one-way latency, median (us) | p90 (us) | 8 MB messages/s | 8 MB bandwidth (GB/s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        p90 = f"{row['lat_p90_us']:.1f}" if "lat_p90_us" in row else "-"
        figures = f"{row['lat_median_us']:.1f} | {p90} | {row['msgs_per_s']:.1f} | {row['gb_per_s']:.2f}"
        lines.append(f"| {name} | {figures} |")
    lines += [
        "",
        "Latency is half a ping-pong round trip of one 16 KB float32 tensor (including header encoding,",
        "validation and the credit message each way). Bandwidth streams 8 MB float32 tensors through one",
        "link until the peer has consumed the last one (median of 3 runs). Plain-pyzmq rows move the same",
        "bytes over the same socket types with no codec, checks or credits: the floor of a hop.",
        "Targets on a quiet machine: ipc:// link median <= 100 us, p90 <= 300 us. Memory-copy rows copy the",
        "same bytes in one process: the ceiling for bandwidth (8 MB stays cache-resident, a generous",
        "ceiling); their latency column is the time of one 16 KB copy. Other jobs shared this machine while",
        "it ran (see the load average): expect run-to-run spread of tens of percent.",
        "curve = tcp:// with CurveZMQ (encryption and a ZAP allow-list); gloo = header and credits on ipc://,",
        "tensor bytes by torch.distributed isend/irecv; cuda-ipc and nccl move GPU tensors (GPU machines only).",
        "",
    ]
    tcp, curve = rows.get("tcp link"), rows.get("curve link")
    if tcp and curve:
        latency, bandwidth = curve["lat_median_us"] / tcp["lat_median_us"], tcp["gb_per_s"] / curve["gb_per_s"]
        lines += [f"CURVE overhead against plain tcp links: 16 KB latency x{latency:.2f} (curve/tcp), "
                  f"8 MB bandwidth divided by {bandwidth:.2f} (tcp/curve).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure every transport's links and the memory-copy ceiling, print the table, optionally save it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table as Markdown to this path")
    parser.add_argument("--window", type=int, default=2, help="credit window of each link (default 2)")
    parser.add_argument("--round-trips", type=int, default=2000, help="latency samples per transport")
    parser.add_argument("--messages", type=int, default=100, help="8 MB messages per bandwidth run")
    parser.add_argument("--no-plain", action="store_true", help="skip the bare-pyzmq rows")
    parser.add_argument("--transports", default=",".join(default_transports()),
                        help="comma-separated transports to measure (default: every one this machine can run: "
                             f"{', '.join(default_transports())})")
    args = parser.parse_args(argv)
    chosen = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = sorted(set(chosen) - set(ALL_TRANSPORTS))
    if unknown:
        parser.error(f"--transports: unknown {', '.join(unknown)}; expected some of {', '.join(ALL_TRANSPORTS)}")
    torch.set_num_threads(1)
    rows = {}
    for transport in chosen:
        rows[f"{transport} link"] = measure_link(transport, args.window, args.round_trips, args.messages)
        if transport in PLAIN_FLOORS and not args.no_plain:
            rows[f"{transport}:// plain pyzmq"] = measure_plain(transport, args.round_trips, args.messages)
    rows.update({f"memory copy ({k})": v for k, v in measure_copy(reps=50).items()})
    table = format_table(rows, args.window, describe_machine())
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as out:
            out.write(table)


if __name__ == "__main__":
    main()
