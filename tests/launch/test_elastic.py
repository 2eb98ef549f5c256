"""Runs under torchrun across hosts: flags, secret, rank 0's store, specs on the wire, and (slow) two nodes
simulated on one machine, bitwise equal to the sequential trainer, also through a killed worker and a restart."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import zmq
from auglocal.engine.config import RunConfig, UsageError, build_data, resolve
from auglocal.launch.backends.elastic.coordinator import spec_from_wire, spec_to_wire
from auglocal.launch.backends.elastic.links import LinkPlan, bind_inbox, connect, publish_inbox, publish_key
from auglocal.launch.backends.elastic.store import RunStore, TorchrunEnv, read_secret
from auglocal.launch.cli import main
from auglocal.workers.links.curve import CurveKeyPair, stop_authenticator
from auglocal.workers.links.link import Link
from auglocal.workers.runtime.worker import WorkerSpec
from auglocal.workers.wire.endpoint_record import EndpointRecordError, sign
from auglocal.workers.wire.messages import Codec, Kind, Message, TensorSpec
from auglocal.workers.wire.protocol import InboxSchema
from auglocal.workers.wire.sealed import seal

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def test_elastic_outside_torchrun_exits_2(tmp_path, monkeypatch, capsys):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    assert main(["--elastic", "--out", str(tmp_path / "run")]) == 2
    assert "start it with torchrun" in capsys.readouterr().err


@pytest.mark.parametrize("flags, expected", [
    (["--sequential"], "does not combine"),
    (["--trace"], "--trace is not available"),
    ([], "--elastic needs --out"),
])
def test_elastic_refuses_impossible_combinations(flags, expected, capsys):
    assert main(["--elastic", *flags]) == 2
    assert expected in capsys.readouterr().err


def test_torchrun_environment_is_read():
    env = TorchrunEnv.from_environ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "10.0.0.1",
                                    "MASTER_PORT": "29500", "TORCHELASTIC_RESTART_COUNT": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.restart_count, env.master_port) == (2, 4, 0, 1, 29500)
    with pytest.raises(UsageError, match="not a number"):
        TorchrunEnv.from_environ({"RANK": "x", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "a",
                                  "MASTER_PORT": "1"})


def test_secret_comes_from_a_private_file_or_the_environment(tmp_path):
    path = tmp_path / "secret"
    path.write_text("abc\n")
    path.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        read_secret(str(path), {})
    path.chmod(0o600)
    assert read_secret(str(path), {}) == "abc"
    assert read_secret(None, {"AUGLOCAL_SECRET": "xyz"}) == "xyz"
    with pytest.raises(UsageError, match="--secret-file"):
        read_secret(None, {})
    empty = tmp_path / "empty"
    empty.write_text("")
    empty.chmod(0o600)
    with pytest.raises(UsageError, match="empty"):
        read_secret(str(empty), {})


def test_a_spec_survives_the_wire_without_its_machine_local_fields():
    schema = InboxSchema(activation=TensorSpec("float32", (None, 16, 8, 8)),
                         image=TensorSpec("float32", (None, 3, 8, 8)))
    spec = WorkerSpec(rank=1, modules=[2, 3], config={"model": "resnet20"}, inbox=Link("ipc:///tmp/a", 3),
                      outbox=Link("ipc:///tmp/b", 3), results=Link("ipc:///tmp/r", 64), run_id="r1",
                      secret="codec-secret", out_dir="/runs/x", coordinator_pid=123, schema=schema,
                      resume_dir="/runs/x/checkpoints/ckpt-000001", fault={"kind": "kill", "worker": 1, "step": 3},
                      ship_layers=True)
    spec.curve, spec.admit = CurveKeyPair.generate(), ("k" * 40,)
    plan = LinkPlan(inbox=("curve", "gloo"), results="curve", group="gloo")
    published = spec_from_wire(spec_to_wire(spec, {"layer_002.pt": "ab" * 32}, plan))
    got = published.spec
    assert (published.window, published.last, published.resume_files) == (3, False, {"layer_002.pt": "ab" * 32})
    assert published.plan == plan and published.plan.outbox(0) == "gloo" and published.plan.outbox(1) is None
    assert got.curve is None and got.admit == ()  # a one-host key pair (its secret half) is never published
    assert got.schema == schema and got.modules == [2, 3] and got.fault == spec.fault and got.ship_layers
    assert got.secret == "" and got.inbox is None and got.resume_dir is None    # never published
    assert got.out_dir == "/runs/x"               # the coordinator's folder: the tag shipped layer files carry


def test_rank_0_store_gives_verified_records_of_this_attempt_only():
    port = free_port()
    host = RunStore.host(port, "s", restart_count=0, timeout_s=5)
    other = RunStore.connect("127.0.0.1", port, "s", timeout_s=5)
    assert other.token == host.token and other.alive()
    host.put("inbox/0", b"tcp://127.0.0.1:1")
    assert other.get("inbox/0") == b"tcp://127.0.0.1:1"
    host.store.set(f"{host.token}/inbox/1", b"tcp://evil:1")               # anyone may write the store
    with pytest.raises(EndpointRecordError):
        other.get("inbox/1")
    host.store.set(f"{host.token}/inbox/2", seal("another-secret", b"tcp://evil:1"))
    with pytest.raises(EndpointRecordError):
        other.get("inbox/2")
    with pytest.raises(EndpointRecordError):
        RunStore.connect("127.0.0.1", port, "wrong-secret", timeout_s=5)
    host.store.set("attempt", seal("s", b"9.newer"))                      # a new attempt: this one is over
    assert not other.alive()


# --- two nodes on one machine (slow: two torchruns, four processes importing torch) -----------------------------
COMMON = ["--model", "resnet20", "--dataset", "digits", "--train-size", "48", "--test-size", "24",
          "--batch-size", "12", "--epochs", "2", "--balance", "flops", "--no-progress", "--no-tensorboard"]


def ours(out: Path) -> list[psutil.Process]:
    """Every process of this machine still running for the run folder `out`."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(out) in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            continue
    return found


def two_nodes(tmp_path: Path, extra: list[str], timeout_s: float = 600, max_restarts: int = 2,
              expect: int = 0) -> tuple[Path, list[str]]:
    """Node A (127.0.0.1) and node B (127.0.0.2), each a torchrun of two processes: rank 0 and 3 workers,
    spread 1 + 2. Returns the run folder and each node's output; asserts both torchruns exit with `expect`
    (0, or nonzero) and that no process of the run is left on either node."""
    out = tmp_path / "run"
    secret = tmp_path / "secret"
    secret.write_text("test-secret-0123456789")
    secret.chmod(0o600)
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1"}
    for name in TORCHRUN_VARS:
        env.pop(name, None)
    rdzv = free_port()
    nodes, logs = [], []
    for addr in ("127.0.0.1", "127.0.0.2"):
        log = open(tmp_path / f"node-{addr}.log", "w")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{rdzv}", "--local-addr", addr,
               "--max-restarts", str(max_restarts), "--monitor-interval", "0.5", "-m",
               "auglocal.launch.backends.elastic", "--",
               "--node-addr", addr,
               "--secret-file", str(secret), "--out", str(out), *COMMON, *extra]
        nodes.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        logs.append(log)
    try:
        codes = [n.wait(timeout=timeout_s) for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
        for log in logs:
            log.close()
    texts = [(tmp_path / f"node-{addr}.log").read_text() for addr in ("127.0.0.1", "127.0.0.2")]
    assert (codes == [0, 0]) if expect == 0 else all(codes), "\n\n".join(t[-3000:] for t in texts)
    deadline = time.monotonic() + 10
    while ours(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = ours(out)
    for p in left:
        p.kill()
    assert not left, f"processes left behind: {[p.pid for p in left]}"
    return out, texts


def sequential_of(out: Path):
    from tests.launch.test_parity import sequential_reference

    cfg = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    data = build_data(cfg)
    resolve(cfg, data)
    return sequential_reference(cfg, data)


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["curve", "gloo"])
def test_two_nodes_equal_the_sequential_trainer(tmp_path, transport):
    """Over curve (what auto picks across hosts: every link CurveZMQ) and gloo (tensor bytes by the attempt's
    process group, headers and credits on ZeroMQ)."""
    from tests.launch.test_parity import assert_same_weights

    out, texts = two_nodes(tmp_path, ["--transport", transport])
    assert f"links into workers 0-2: {transport}, {transport}, {transport}; results: curve" in "".join(texts)
    model, aux, history, updates = sequential_of(out)
    assert_same_weights(model, aux, out)
    summary = json.loads((out / "summary.json").read_text())
    assert {int(k): v for k, v in summary["updates"].items()} == updates
    assert "done:" in "".join(texts)


@pytest.mark.slow
def test_a_killed_worker_on_node_b_restarts_the_group_which_resumes_and_ends_equal(tmp_path):
    """Worker 2 is rank 3: always on the node without rank 0. It is SIGKILLed before minibatch 5 of 8; the
    checkpoint after minibatch 4 is committed by then (one every 2 steps)."""
    from tests.launch.test_parity import assert_same_weights

    out, texts = two_nodes(tmp_path, ["--checkpoint-every", "2", "--inject-fault", "kill:worker=2:step=5"])
    text = "".join(texts)
    assert "torchrun restart 1: continuing" in text
    assert "resuming from checkpoint" in text and "4 minibatches done" in text
    model, aux, history, updates = sequential_of(out)
    assert_same_weights(model, aux, out)
    summary = json.loads((out / "summary.json").read_text())
    assert {int(k): v for k, v in summary["updates"].items()} == updates


@pytest.mark.slow
def test_a_run_left_by_a_failed_group_resumes_on_one_host_with_another_worker_count(tmp_path):
    """No restarts allowed: the group fails after checkpoint 2 (minibatch 4 of 8); node A's ranks end after the
    heartbeat timeout (torchrun does not stop a node whose peer node gave up). The run folder rank 0 wrote
    from shipped layer files is today's format: one host resumes it with 2 workers, bitwise equal."""
    from tests.launch.test_parity import assert_same_weights

    out, _ = two_nodes(tmp_path, ["--checkpoint-every", "2", "--inject-fault", "kill:worker=2:step=5",
                                  "--heartbeat-timeout", "10"], max_restarts=0, expect=1)
    assert not (out / "model.pt").exists()
    done = subprocess.run([sys.executable, "-m", "auglocal.launch.cli", "--resume", str(out), "--workers", "2",
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resuming from checkpoint 2" in done.stdout and "4 minibatches done" in done.stdout
    model, aux, history, updates = sequential_of(out)
    assert_same_weights(model, aux, out)


def torchrun_environ(rank: int, port: int, **extra) -> dict:
    return {"RANK": str(rank), "WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "AUGLOCAL_SECRET": "s", **extra}


def elastic_args(tmp_path, *flags):
    from auglocal.launch.cli import build_parser

    return build_parser().parse_args(["--elastic", "--out", str(tmp_path / "run"), *flags])


def test_ranks_join_rank_0s_store_and_rank_0_sees_the_groups_restarts(tmp_path):
    from auglocal.launch.backends.elastic import ElasticRank

    port = free_port()
    zero = ElasticRank.join(elastic_args(tmp_path), torchrun_environ(0, port))
    assert zero.is_coordinator and zero.node_addr == "127.0.0.1"     # rank 0 defaults to MASTER_ADDR
    one = ElasticRank.join(elastic_args(tmp_path, "--node-addr", "127.0.0.2"),
                           torchrun_environ(1, port, TORCHELASTIC_RESTART_COUNT="0"))
    two = ElasticRank.join(elastic_args(tmp_path, "--node-addr", "127.0.0.2"),
                           torchrun_environ(2, port, TORCHELASTIC_RESTART_COUNT="1"))
    assert one.store.token == two.store.token == zero.store.token
    assert zero.group_restarts() == 1        # rank 0's node counted none: node B's count is the group's


@pytest.mark.parametrize("flags, environ, expected", [
    ([], {}, "needs --node-addr"),
    (["--node-addr", "127.0.0.2"], {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "0"}, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"),
    (["--node-addr", "127.0.0.2"], {"AUGLOCAL_SECRET": "another"}, "secret differs"),
])
def test_a_worker_rank_that_cannot_join_says_why(tmp_path, flags, environ, expected):
    from auglocal.launch.backends.elastic import ElasticRank

    port = free_port()
    zero = ElasticRank.join(elastic_args(tmp_path), torchrun_environ(0, port))     # keeps its store alive
    assert zero.is_coordinator
    with pytest.raises(UsageError, match=expected):
        ElasticRank.join(elastic_args(tmp_path, *flags), torchrun_environ(1, port, **environ))


def test_a_worker_refuses_a_forged_results_record_and_never_connects(tmp_path, capsys):
    from auglocal.launch.backends.elastic.worker import EXIT_REFUSED, run_worker

    port = free_port()
    host = RunStore.host(port, "s", restart_count=0, timeout_s=5)
    spec = WorkerSpec(rank=0, modules=[0], config={}, inbox=Link("ipc:///unused", 2), outbox=None,
                      results=Link("ipc:///unused", 64), run_id="r1", secret="", out_dir=str(tmp_path),
                      coordinator_pid=0)
    host.put("spec/0", spec_to_wire(spec, {}, LinkPlan(inbox=("curve",), results="curve", group=None)))
    keys = publish_key(host, 0, "127.0.0.1")
    host.store.set(f"{host.token}/results", sign("not-the-run-secret", "tcp://127.0.0.1:9", keys.public))
    env = TorchrunEnv(rank=1, world_size=2, local_rank=0, restart_count=0, master_addr="127.0.0.1", master_port=port)
    worker_store = RunStore.connect("127.0.0.1", port, "s", timeout_s=5)
    previous = signal.getsignal(signal.SIGINT)
    try:
        assert run_worker(env, worker_store, "127.0.0.1") == EXIT_REFUSED
    finally:
        signal.signal(signal.SIGINT, previous)       # run_worker leaves Ctrl-C to rank 0
    assert "was refused" in capsys.readouterr().err


def test_an_elastic_inbox_admits_only_the_published_key_of_its_sender():
    """Worker 0's inbox as the elastic launch sets it up: it admits rank 0's verified key; a process holding
    the inbox's verified record and the codec secret, but whose own key was never published, completes no
    CURVE handshake and delivers nothing; a key record signed under another secret is refused outright."""
    port = free_port()
    store = RunStore.host(port, "s", restart_count=0, timeout_s=5)
    codec = Codec("r1", "codec-secret")
    rank0 = publish_key(store, 0, "127.0.0.1")
    worker = CurveKeyPair.generate()
    inbox = bind_inbox(store, Link("tcp://127.0.0.1:0", 2, "curve"), codec, "w0", worker, senders=[0])
    context = zmq.Context.instance()
    try:
        publish_inbox(store, "inbox/0", inbox, worker)
        with (connect(store, "inbox/0", codec, CurveKeyPair.generate(), "curve", 2) as stranger,
              connect(store, "inbox/0", codec, rank0, "curve", 2) as feed):
            try:
                stranger.send(Message(Kind.TRAIN, "stranger", step=1), 1000)
            except TimeoutError:
                pass                    # the handshake was refused: nothing to queue the message on
            with pytest.raises(TimeoutError):
                inbox.recv(1000)
            feed.send(Message(Kind.TRAIN, "coordinator", step=2), 5000)
            got = inbox.recv(5000)
            assert (got.sender, got.step) == ("coordinator", 2)
            with pytest.raises(TimeoutError):
                inbox.recv(300)
        assert inbox.allowed.refused >= 1 and inbox.rejected == 0
        store.store.set(f"{store.token}/key/2", sign("another-secret", "127.0.0.9", CurveKeyPair.generate().public))
        with pytest.raises(EndpointRecordError, match="HMAC"):
            bind_inbox(store, Link("tcp://127.0.0.1:0", 2, "curve"), codec, "w1", worker, senders=[2])
    finally:
        inbox.close()
        stop_authenticator(context)


@pytest.mark.parametrize("asked, hosts, devices, expected", [
    ("auto", ["a", "b", "b", "a"], ["cpu"] * 3, (("curve",) * 3, "curve", None)),
    ("tcp", ["a", "b"], ["cpu"], (("tcp",), "tcp", None)),
    ("gloo", ["a", "b", "b"], ["cpu"] * 2, (("gloo", "gloo"), "curve", "gloo")),
    ("auto", ["a", "a", "b"], ["cuda:0", "cuda:0"], (("curve", "nccl"), "curve", "cpu:gloo,cuda:nccl")),
    ("cuda-ipc", ["a", "a", "a"], ["cuda:0", "cuda:1"], (("curve", "cuda-ipc"), "curve", None)),
])
def test_the_link_plan_follows_the_transport_asked_and_the_pairs(asked, hosts, devices, expected):
    plan = LinkPlan.resolve(asked, hosts, devices)
    assert (plan.inbox, plan.results, plan.group) == expected


def test_the_gloo_interface_is_the_one_holding_the_node_address():
    from auglocal.launch.backends.elastic.links import interface_of

    assert interface_of("127.0.0.1") is not None and interface_of("203.0.113.254") is None


def test_elastic_refuses_ipc_links(tmp_path, capsys):
    assert main(["--elastic", "--transport", "ipc", "--out", str(tmp_path / "run")]) == 2
    assert "every inbox binds on its node's address" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_rank_0_restarts_the_group_which_resumes_and_ends_equal(tmp_path):
    """Rank 0 SIGKILLs itself after feeding minibatch 5: its store goes with it, every worker exits, torchrun
    restarts the group, and the new rank 0 continues from the last committed checkpoint."""
    from tests.launch.test_parity import assert_same_weights

    out, texts = two_nodes(tmp_path, ["--checkpoint-every", "2", "--inject-fault", "kill-coordinator:step=5"])
    text = "".join(texts)
    assert "torchrun restart 1: continuing" in text and "resuming from checkpoint" in text
    model, aux, history, updates = sequential_of(out)
    assert_same_weights(model, aux, out)


def test_a_worker_count_other_than_the_groups_is_refused_before_anything_is_written(tmp_path):
    from types import SimpleNamespace

    from auglocal.launch.backends.elastic import train_elastic
    from auglocal.launch.run.pipeline import PipelineOptions

    rank = SimpleNamespace(env=SimpleNamespace(world_size=4), restarts=0)
    with pytest.raises(UsageError, match="has 3 worker rank"):
        train_elastic(rank, None, None, PipelineOptions(workers="2"), str(tmp_path / "run"), False, False)
    assert not (tmp_path / "run").exists()
