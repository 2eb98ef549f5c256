"""`auglocal.train` and `auglocal.load`: the command line as two Python calls, for a user's own network and data.

The options are the command line's flags (their argparse dest names), turned into the very tokens a user would
type and parsed by the CLI's own parser: every check, default and message is the CLI's, and the run goes through
the same function `auglocal-launch` runs (launch/cli.py `run`), so the run folder is the one the CLI writes. What
only Python can give, the user's Datasets, is injected there as a DataSource. docs/api.md is the user's guide.
"""

from __future__ import annotations

import argparse
import difflib
import json
from dataclasses import dataclass
from pathlib import Path

#: options of auglocal.train that are not command-line flags
API_OPTIONS = ("augment",)
#: flags that are command-line actions, not settings of a run
CLI_ONLY = ("help", "list_presets", "cleanup", "elastic", "node_addr", "store_port", "secret_file")


@dataclass(frozen=True)
class Result:
    """A finished run: its folder (config.json, model.pt, aux.pt, metrics.jsonl, summary.json, pictures) and the
    test accuracies (%) it recorded; run_dir is None for a dry run, which writes nothing."""

    run_dir: Path | None
    best_test_accuracy: float | None
    last_test_accuracy: float | None
    exit_code: int = 0


def _parser() -> argparse.ArgumentParser:
    from auglocal.engine.config import UsageError
    from auglocal.launch.cli import build_parser

    parser = build_parser()

    def error(message: str):     # argparse's own words, as the CLI prints them after "error:"; no exit
        raise UsageError(message)

    parser.error = error
    return parser


def to_argv(model: str, options: dict) -> list[str]:
    """The command-line tokens of `options`: a boolean flag present for True, absent for False; None omitted
    (the flag's default); anything else as --flag=value. Unknown names raise ValueError naming close matches."""
    actions = {a.dest: a for a in _parser()._actions if a.option_strings}
    argv = [f"--model={model}"]
    for name, value in options.items():
        if name in CLI_ONLY or name not in actions:
            allowed = [n for n in actions if n not in CLI_ONLY and n != "model"] + list(API_OPTIONS)
            close = difflib.get_close_matches(name, allowed, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see docs/cli-reference.md for the flags"
            what = "is a command-line action only" if name in CLI_ONLY else "is not an option of auglocal.train"
            raise ValueError(f"{name!r} {what}{hint}")
        action = actions[name]
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False (the flag {flag}), got {value!r}")
            argv += [flag] if value else []
        elif value is not None:
            argv.append(f"{flag}={value}")
    return argv


def model_spec(model) -> str:
    """A registered name or spec string as it is; a top-level function as the spec workers import it by."""
    if isinstance(model, str):
        return model
    if callable(model):
        from auglocal.engine.models import model_spec_of

        return model_spec_of(model)
    raise TypeError(f"model must be a registered name, a 'package.module:function' string or a function, got "
                    f"{type(model).__name__}")


def _user_source(args: argparse.Namespace, options: dict, train_data, test_data, augment: str | None):
    """The user's Datasets as a DataSource; a --resume takes the sizes the run recorded unless given again."""
    from auglocal.engine.data import DatasetSource

    if test_data is None or train_data is None:
        raise ValueError("give both train_data and test_data (the test set is evaluated after every epoch)")
    if options.get("dataset") is not None or options.get("data_dir") is not None:
        raise ValueError("give either train_data and test_data or the dataset/data_dir options, not both")
    sizes = {"num_classes": args.num_classes, "train_size": args.train_size, "test_size": args.test_size}
    if args.resume:
        sizes = {**_recorded_sizes(Path(args.resume), train_data, test_data), **{k: v for k, v in sizes.items()
                                                                                  if v is not None}}
    return DatasetSource(train_data, test_data, input_size=args.input_size, augment=augment, **sizes)


def _recorded_sizes(run_dir: Path, train_data, test_data) -> dict:
    """The sizes and classes a run recorded, where the data given can have them (a set now smaller than the run's
    keeps its own size, and the resume then says that the data differ)."""
    try:
        raw = json.loads((run_dir / "config.json").read_bytes())
        lengths = {"train_size": len(train_data), "test_size": len(test_data)}
    except (OSError, ValueError, TypeError):
        return {}           # the resume itself reports a missing or damaged config.json
    return {k: raw[k] for k in ("num_classes", "train_size", "test_size")
            if isinstance(raw.get(k), int) and raw[k] <= lengths.get(k, raw[k])}


def _best(run_dir: Path) -> tuple[float | None, float | None]:
    epochs = []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        epochs = [row for row in rows if row.get("kind") == "epoch"]
    if not epochs:
        return None, None
    return epochs[-1]["best_accuracy"], epochs[-1]["test_accuracy"]


def train(model, train_data=None, test_data=None, *, augment: str | None = None, **options) -> Result:
    """Train `model` as `auglocal-launch` would with the same flags; see docs/api.md.

    model: a registered name ("resnet32"), "package.module:function", "/path/file.py:function", or a top-level
    function returning a LayeredModel or (blocks, head). train_data, test_data: map-style Datasets of
    (float image (3, S, S), int label), read once by this process; without them the `dataset` option's set.
    augment: None or "cifar" (seeded pad-4 reflect crop and flip) for train_data. options: the CLI's flags by
    their Python names (rule, d, tau, workers, sequential, threads, epochs, batch_size, lr, seed, out, resume, ...).
    Bad values raise ValueError (UsageError) with the CLI's message; a run that fails raises RuntimeError."""
    from auglocal.engine.models.imports import loading_script
    from auglocal.launch.cli import run, stop_signals

    script = loading_script()
    if script is not None:
        raise RuntimeError(f"auglocal.train was called while {script} was loaded to import its model function (a "
                           "worker does that): put the script's training call under "
                           "`if __name__ == \"__main__\":` so that loading it only defines functions")
    argv = to_argv(model_spec(model), options)
    args = _parser().parse_args(argv)
    data = None
    if train_data is not None or test_data is not None:
        data = _user_source(args, options, train_data, test_data, augment)
    elif augment is not None:
        raise ValueError("augment applies to train_data; the built-in data sets bring their own augmentation")
    with stop_signals():
        code = run(args, argv, data=data)
    run_dir = None if args.dry_run else Path(args.out)
    if code != 0:
        raise RuntimeError(f"training failed (exit code {code}; the messages above say why); run folder {run_dir}"
                           + ("" if run_dir is None else f"; continue it with auglocal.train(..., resume="
                                                         f"{str(run_dir)!r}) where a checkpoint was committed"))
    best, last = _best(run_dir) if run_dir is not None else (None, None)
    return Result(run_dir, best, last, code)


def load(run_dir):
    """The trained primary network of a finished run folder, as an nn.Module in eval mode (weights: model.pt)."""
    from auglocal.engine.atomic import read_torch_state
    from auglocal.engine.config import RunConfig
    from auglocal.engine.models import build_model

    path = Path(run_dir)
    if not (path / "config.json").is_file():
        raise ValueError(f"{run_dir} is not a run folder (no config.json)")
    summary = path / "summary.json"
    finished = summary.is_file() and "stopped" not in _read_json(summary)
    if not finished or not (path / "model.pt").is_file():
        raise ValueError(f"{run_dir}: the run has not finished (no summary.json and model.pt of a completed run); "
                         "resume it first")
    cfg = RunConfig.from_dict(_read_json(path / "config.json"))
    network = build_model(cfg.model, cfg.num_classes, cfg.input_size)
    try:
        network.load_state_dict(read_torch_state(path / "model.pt"))
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"{path / 'model.pt'} does not fit {cfg.model} as config.json describes it: {err}") from err
    return network.eval()


def _read_json(path: Path) -> dict:
    """A JSON object the run wrote; a damaged one is named (the engine writes them whole, atomically)."""
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged (not the JSON the run wrote: {err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path} is damaged (a JSON {type(value).__name__}, not the object the run wrote)")
    return value
