"""What a run remembers of its flags, and what --resume may and may not change.

Two kinds of flag: those that define what a run computes (`RUN_IDENTITY`: --resume refuses another value) and
those that say how it was run (`RUNTIME_FLAGS`: saved in runtime.json, restored by --resume unless given again,
and a change is appended to the file's `changes`). The command line (launch/cli.py) parses; this module decides,
from the parsed flags and the names the user typed (`given`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from auglocal.engine.config import IDENTITY_FIELDS, RunConfig, UsageError, check_number
from auglocal.engine.precision import resolve_memory_format

#: settings that define what a run computes (as flag names): --resume refuses a different value for any of them
RUN_IDENTITY = tuple("warmup_epochs" if name == "warmup" else name for name in IDENTITY_FIELDS)
#: how a run was run (not what it computes): saved in runtime.json, restored by --resume unless given again
RUNTIME_FLAGS = ("workers", "gpus", "balance", "worker_threads", "worker_kind", "workers_per_host", "streams_per_gpu",
                 "worker_malloc", "trace", "checkpoint_every", "heartbeat_timeout", "max_restarts", "recovery",
                 "replay_log_mb", "replay_spill_dir", "no_tensorboard", "transport", "no_progress", "spares",
                 "replicas")
# not --cuda-graphs: a store-true flag cannot be given off again, and a resume on CPU workers would then exit 2;
# left out, it changes nothing a resume computes
RUNTIME_FILE = "runtime.json"


def validate_runtime(args: argparse.Namespace) -> None:
    """Numeric flags of how a run is executed: finite and in range, else exit 2 naming the flag."""
    check_number("--worker-threads", args.worker_threads, low=1)
    check_number("--threads", args.threads, low=1)
    check_number("--heartbeat-timeout", args.heartbeat_timeout, low=0, low_open=True)
    check_number("--checkpoint-every", args.checkpoint_every, low=0)
    check_number("--max-restarts", args.max_restarts, low=0)
    check_number("--workers-per-host", args.workers_per_host, low=0)
    check_number("--streams-per-gpu", args.streams_per_gpu, low=0)
    check_number("--spares", args.spares, low=0)
    from auglocal.launch.run.replicas import replicas_value

    replicas_value(args)
    from auglocal.engine.planning.mac_conventions import MAC_CONVENTIONS

    if args.macs not in MAC_CONVENTIONS:
        raise UsageError(f"--macs must be one of {', '.join(MAC_CONVENTIONS)}, got {args.macs!r}")
    if args.workers not in ("auto", "layer"):
        try:
            workers = int(args.workers)
        except ValueError:
            raise UsageError(f"--workers {args.workers!r}: expected auto, layer or a number") from None
        check_number("--workers", workers, low=1)


def resume_config(args: argparse.Namespace, given: set[str]) -> RunConfig:
    """The saved config of --resume RUN_DIR; refuses flags that would change what the run computes."""
    path = Path(args.resume) / "config.json"
    if not path.is_file():
        raise UsageError(f"--resume {args.resume}: no run folder there (expected {path})")
    try:
        raw = json.loads(path.read_bytes())
        if not isinstance(raw, dict):
            raise ValueError
        saved = RunConfig.from_dict(raw)
    except (ValueError, TypeError):
        raise UsageError(f"--resume {args.resume}: {path} is damaged (expected the JSON object of the run's "
                         "settings); restore it, or start the run again with --overwrite") from None
    if raw.get("trainer") == "sequential":
        raise UsageError(f"--resume {args.resume}: that run used --sequential, which keeps no checkpoints; "
                         "run it again with --overwrite")
    field_of = {"warmup_epochs": "warmup"}
    for name in (n for n in RUN_IDENTITY if n in given):
        value, old = getattr(args, name), getattr(saved, field_of.get(name, name))
        if name == "memory_format":
            value = resolve_memory_format(value, saved.device)
        if value != old:
            raise UsageError(f"--resume {args.resume}: that run has --{name.replace('_', '-')} {old}, not {value}; "
                             "a checkpoint only continues the run it belongs to")
    if "nonfinite" in given:       # not the run's identity: a run that stopped at a divergence had skipped nothing
        saved.nonfinite = args.nonfinite
    return saved


def restore_runtime(args: argparse.Namespace, given: set[str]) -> dict:
    """--resume: the runtime flags the run was started with (runtime.json), except those given again."""
    path = Path(args.resume) / RUNTIME_FILE
    try:
        saved = json.loads(path.read_bytes())["flags"]
        if not isinstance(saved, dict):
            raise TypeError
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"--resume {args.resume}: {path} is damaged (expected the JSON auglocal-launch wrote); "
                         "remove it to resume with default flags") from None
    for name in RUNTIME_FLAGS:
        if name in saved and name not in given:
            setattr(args, name, saved[name])
    return {name: getattr(args, name) for name in RUNTIME_FLAGS if name in given and saved.get(name) !=
            getattr(args, name)}


def record_runtime(args: argparse.Namespace, overrides: dict) -> None:
    """runtime.json: the runtime flags in force; a resume that overrides some appends them to `changes`."""
    path = Path(args.out) / RUNTIME_FILE
    changes = []
    if args.resume and path.exists():
        try:
            changes = list(json.loads(path.read_bytes()).get("changes", []))
        except (ValueError, AttributeError, TypeError):
            changes = []
        if overrides:
            changes.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "flags": overrides})
    from auglocal.engine.atomic import atomic_write_bytes

    record = {"flags": {name: getattr(args, name) for name in RUNTIME_FLAGS}, "changes": changes}
    atomic_write_bytes(path, json.dumps(record, indent=1).encode())


def record_nonfinite(run_dir: str, policy: str) -> None:
    """--resume with another --nonfinite: config.json says which one the run continues with (a later --resume
    keeps it unless given again), the only setting --resume may change there."""
    path = Path(run_dir) / "config.json"
    raw = json.loads(path.read_bytes())
    if raw.get("nonfinite", "stop") != policy:
        from auglocal.engine.atomic import atomic_write_bytes

        print(f"auglocal-launch: resuming with --nonfinite {policy} (was {raw.get('nonfinite', 'stop')})")
        atomic_write_bytes(path, json.dumps({**raw, "nonfinite": policy}, indent=2).encode())


def adopt_data(cfg: RunConfig, data, resume: str | None) -> None:
    """A run on a user's Dataset (auglocal.train): config.json names it ("user:<class>") and its sizes, and a
    --resume must be given the same data again, which only the Python API can do."""
    from auglocal.engine.data import is_user_dataset

    if data is None:
        if is_user_dataset(cfg.dataset):
            raise UsageError(f"--resume {resume}: that run trained on a Python Dataset ({cfg.dataset}); resume it "
                             f"from Python with the same data: auglocal.train(model, train_data, test_data, "
                             f"resume={str(resume)!r}) (docs/api.md)")
        return
    if resume:
        saved = (cfg.dataset, cfg.train_size, cfg.test_size)
        given = (data.name, data.train_size, data.test_size)
        if saved != given:
            raise UsageError(f"--resume {resume}: that run trained on {saved[0]} ({saved[1]} training, {saved[2]} "
                             f"test images), not {given[0]} ({given[1]}, {given[2]}); a checkpoint only continues "
                             "the run it belongs to")
        return
    cfg.dataset, cfg.data_dir = data.name, None
    cfg.train_size, cfg.test_size = data.train_size, data.test_size


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(model=args.model, rule=args.rule, d=args.d, tau=args.tau, strategy=args.strategy,
                     convention=args.convention, dataset=args.dataset, data_dir=args.data_dir,
                     num_classes=args.num_classes, input_size=args.input_size, train_size=args.train_size,
                     test_size=args.test_size, epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, warmup=args.warmup_epochs,
                     schedule=args.schedule, seed=args.seed,
                     max_steps=args.max_steps, memory_format=args.memory_format, precision=args.precision,
                     nonfinite=args.nonfinite, dgl_pool=args.dgl_pool)
