"""auglocal.train and auglocal.load: the CLI's checks and run folder, a user's network and Datasets, parity."""

import json
import sys

import pytest
import torch
from auglocal.engine.config import UsageError
from auglocal.launch.cli import main
from torch.utils.data import Dataset

import auglocal

#: a user's network module, written into tmp_path: constant-width blocks, so every aux net chains
USER_NETS = """
import torch.nn as nn


def _block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def tiny_cnn(num_classes):
    blocks = [_block(3, 8)] + [_block(8, 8) for _ in range(4)]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    return blocks, head
"""

#: the options every small run here shares (fast: a few steps, no pictures that need measuring)
SMALL = dict(epochs=1, batch_size=12, max_steps=3, lr=0.05, seed=3, d=2, balance="flops", no_progress=True,
             no_tensorboard=True)


class Pixels(Dataset):
    """A deterministic user Dataset: seeded random 16x16 images, 4 classes."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 16, 16, generator=g)
        self.labels = torch.randint(0, 4, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.rand(3, 16, 16), 0


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    folder = tmp_path / "usercode"
    folder.mkdir()
    (folder / "mynets.py").write_text(USER_NETS)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("mynets", None)
    yield "mynets"
    sys.modules.pop("mynets", None)


def cli_error(capsys, argv) -> str:
    """The CLI's message for bad flags (argparse exits 2 itself; a UsageError returns 2)."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("options, argv", [
    ({"recovery": "some"}, ["--recovery", "some"]),
    ({"d": "four"}, ["--d", "four"]),
    ({"d": 1}, ["--d", "1"]),
    ({"workers": "many"}, ["--workers", "many"]),
    ({"tau": 2.0}, ["--tau", "2.0"]),
    ({"optimizer": "adam"}, ["--optimizer", "adam"]),
])
def test_a_bad_value_raises_the_clis_message(options, argv, capsys, tmp_path):
    expected = cli_error(capsys, [*argv, "--dry-run"])
    with pytest.raises(ValueError) as err:
        auglocal.train("resnet20", dry_run=True, **options)
    assert f"error: {err.value}" in expected
    assert isinstance(err.value, UsageError)


def test_an_unknown_option_names_the_close_ones():
    with pytest.raises(ValueError, match=r"'epoch' is not an option of auglocal.train; did you mean epochs"):
        auglocal.train("resnet20", epoch=1)
    with pytest.raises(ValueError, match="sequential must be True or False"):
        auglocal.train("resnet20", sequential="yes")
    with pytest.raises(ValueError, match="command-line action"):
        auglocal.train("resnet20", list_presets=True)


@pytest.mark.parametrize("bad, message", [
    (lambda: [(torch.rand(3, 16, 16), 0)] * 4, "map-style|label"),      # a list works; its items are checked
    (lambda: [(torch.rand(3, 16, 16), 0.5)] * 4, "the label must be an int"),
    (lambda: [(torch.rand(3, 16, 8), 0)] * 4, "square"),
    (lambda: [(torch.rand(1, 16, 16), 0)] * 4, "3 channels"),
    (lambda: [(torch.zeros(3, 16, 16, dtype=torch.uint8), 0)] * 4, "float tensor"),
    (lambda: [], "empty"),
    (lambda: Stream(), "map-style"),
])
def test_bad_datasets_are_refused_clearly(bad, message, tmp_path):
    data = bad()
    if message == "map-style|label":        # a plain list of good pairs is a map-style dataset: accepted
        result = auglocal.train("resnet20", data, Pixels(4, 1), dry_run=True)
        assert result.run_dir is None
        return
    with pytest.raises(ValueError, match=message):
        auglocal.train("resnet20", data, Pixels(4, 1), out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_train_and_test_images_must_match(tmp_path):
    small = [(torch.rand(3, 8, 8), 1)] * 4
    with pytest.raises(ValueError, match=r"train_data images are \(3, 16, 16\) but test_data images are"):
        auglocal.train("resnet20", Pixels(8, 0), small)


@pytest.mark.parametrize("execution, flags", [
    ({"sequential": True, "threads": 1}, ["--sequential", "--threads", "1"]),
    ({"workers": 2, "balance": "flops"}, ["--workers", "2", "--balance", "flops"]),
])
def test_the_cli_and_the_api_write_the_same_run_folder(execution, flags, tmp_path):
    flags = ["--dataset", "mnist5k", "--train-size", "48", "--test-size", "24", "--model", "resnet20", *flags,
             "--epochs", "1", "--batch-size", "12", "--max-steps", "3", "--d", "2", "--seed", "3", "--no-progress",
             "--no-tensorboard"]
    assert main([*flags, "--out", str(tmp_path / "cli")]) == 0
    result = auglocal.train("resnet20", dataset="mnist5k", train_size=48, test_size=24, epochs=1, batch_size=12,
                            max_steps=3, d=2, seed=3, no_progress=True, no_tensorboard=True,
                            out=str(tmp_path / "api"), **execution)
    cli, api = tmp_path / "cli", result.run_dir
    listing = [sorted(str(p.relative_to(run)) for p in run.rglob("*")) for run in (cli, api)]
    assert listing[0] == listing[1]
    for name in ("config.json", "runtime.json", "data.json", "model.pt", "aux.pt"):
        assert (cli / name).read_bytes() == (api / name).read_bytes(), name
    if "workers" in execution:
        assert (cli / "plan.json").read_bytes() == (api / "plan.json").read_bytes()
    epochs = [json.loads(line) for line in (api / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line]
    assert result.best_test_accuracy == epochs[-1]["best_accuracy"]


def test_a_user_dataset_is_recorded_and_the_cli_cannot_resume_it(tmp_path, capsys):
    result = auglocal.train("resnet20", Pixels(36, 0), Pixels(12, 1), workers=2, out=str(tmp_path / "run"),
                            **SMALL)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert (config["dataset"], config["train_size"], config["test_size"]) == ("user:Pixels", 36, 12)
    assert (config["num_classes"], config["input_size"]) == (4, 16)
    code = main(["--resume", str(result.run_dir)])
    assert code == 2
    assert "auglocal.train(model, train_data, test_data, resume=" in capsys.readouterr().err
    again = auglocal.train("resnet20", Pixels(36, 0), Pixels(12, 1), resume=str(result.run_dir), no_progress=True)
    assert again.best_test_accuracy == result.best_test_accuracy      # nothing left to train: the same folder
    with pytest.raises(ValueError, match=r"that run trained on user:Pixels \(36 training, 12 test images\), not "
                                         r"user:Pixels \(30, 12\)"):
        auglocal.train("resnet20", Pixels(30, 0), Pixels(12, 1), resume=str(result.run_dir))
    network = auglocal.load(result.run_dir)
    state = torch.load(result.run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())
    assert network(Pixels(2, 5).images).shape == (2, 4)


def test_load_refuses_a_folder_that_is_no_finished_run(tmp_path):
    with pytest.raises(ValueError, match="not a run folder"):
        auglocal.load(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="has not finished"):
        auglocal.load(tmp_path)


def test_a_model_function_in_the_users_module_trains_with_process_workers(tmp_path, monkeypatch):
    from auglocal.launch.backends.one_host.processes import start_forkserver

    start_forkserver()      # running before the module's folder is on sys.path, as after an earlier run: each
    # worker still gets this process's sys.path (multiprocessing's preparation data of every new process)
    folder = tmp_path / "later"
    folder.mkdir()
    (folder / "mynets.py").write_text(USER_NETS)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("mynets", None)
    monkeypatch.setitem(sys.modules, "mynets", __import__("mynets"))     # gone again after the test
    from mynets import tiny_cnn

    result = auglocal.train(tiny_cnn, Pixels(36, 0), Pixels(12, 1), workers=2, worker_kind="process",
                            out=str(tmp_path / "run"), **SMALL)
    assert json.loads((result.run_dir / "config.json").read_text())["model"] == "mynets:tiny_cnn"
    assert set(json.loads((result.run_dir / "summary.json").read_text())["worker_pids"]) == {"0", "1"}
    assert auglocal.load(result.run_dir)(Pixels(2, 5).images).shape == (2, 4)


def test_a_model_that_cannot_be_imported_is_named(user_module, tmp_path):
    with pytest.raises(ValueError, match="tiny_rnn"):
        auglocal.train("mynets:tiny_rnn", Pixels(12, 0), Pixels(4, 1), out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="nosuchmodule"):
        auglocal.train("nosuchmodule:tiny_cnn", Pixels(12, 0), Pixels(4, 1), out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def same_tensors(a, b) -> None:
    for name in ("model.pt", "aux.pt"):
        left, right = (torch.load(run / name, weights_only=True) for run in (a, b))
        flat_left, flat_right = _flat(left), _flat(right)
        assert flat_left.keys() == flat_right.keys(), name
        for key, value in flat_left.items():
            assert torch.equal(value, flat_right[key]), f"{name} {key} differs"


def _flat(state, prefix="") -> dict:
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("execution", [
    {"workers": 2}, {"workers": 3}, {"workers": 3, "worker_kind": "thread"},
])
def test_a_custom_network_through_the_api_equals_the_sequential_trainer(execution, user_module, tmp_path):
    data = Pixels(36, 0), Pixels(12, 1)
    reference = auglocal.train("mynets:tiny_cnn", *data, sequential=True, threads=1, out=str(tmp_path / "seq"),
                               **SMALL)
    pipelined = auglocal.train("mynets:tiny_cnn", *data, out=str(tmp_path / "pipe"), **SMALL, **execution)
    same_tensors(reference.run_dir, pipelined.run_dir)


def test_augmentation_is_seeded_and_recorded(tmp_path):
    from auglocal.engine.data import DatasetSource

    source = DatasetSource(Pixels(24, 0), Pixels(8, 1), augment="cifar")
    assert source.name == "user:Pixels+cifar"
    first = source.train_batch(3, 1, 0, 8)
    assert torch.equal(first[0], source.train_batch(3, 1, 0, 8)[0])
    plain = DatasetSource(Pixels(24, 0), Pixels(8, 1))
    assert not torch.equal(first[0], plain.train_batch(3, 1, 0, 8)[0])
    assert torch.equal(first[1], plain.train_batch(3, 1, 0, 8)[1])     # the same order, other pixels
    x = plain.train_images
    assert plain.mean == pytest.approx(tuple(x.mean(dim=(0, 2, 3)).tolist()))
    normalised = plain.test_batch(0, 8)[0]
    assert torch.allclose(normalised, (Pixels(8, 1).images - torch.tensor(plain.mean).view(1, 3, 1, 1))
                          / torch.tensor(plain.std).view(1, 3, 1, 1), atol=1e-6)


def test_the_model_spec_names_the_run_folder(user_module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = auglocal.train("mynets:tiny_cnn", Pixels(24, 0), Pixels(8, 1), sequential=True, threads=1, **SMALL)
    assert result.run_dir.parent.name == "runs"
    assert result.run_dir.name.startswith("mynets.tiny_cnn-auglocal-")



def test_the_cli_takes_a_model_spec(user_module, capsys):
    assert main(["--model", f"{user_module}:tiny_cnn", "--d", "2", "--dry-run", "--workers", "2",
                 "--balance", "flops"]) == 0
    out = capsys.readouterr().out
    assert "model mynets:tiny_cnn (L = 5)" in out
    assert "pipeline plan: 2 worker(s)" in out
    assert main(["--model", f"{user_module}:tiny_rnn", "--dry-run"]) == 2
    assert "tiny_rnn" in capsys.readouterr().err


def test_user_data_and_a_dataset_option_exclude_each_other():
    with pytest.raises(ValueError, match="either train_data and test_data or the dataset"):
        auglocal.train("resnet20", Pixels(8, 0), Pixels(4, 1), dataset="mnist5k")
    with pytest.raises(ValueError, match="both train_data and test_data"):
        auglocal.train("resnet20", Pixels(8, 0))
    with pytest.raises(ValueError, match="augment applies to train_data"):
        auglocal.train("resnet20", augment="cifar", dry_run=True)


UNGUARDED = USER_NETS + """
import auglocal

auglocal.train(tiny_cnn, dataset="mnist5k", {options})
"""


def test_a_script_that_trains_unguarded_is_told_to_guard_it_in_a_file_spec(tmp_path):
    from auglocal.engine.models import build_model

    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(options="epochs=1"))
    with pytest.raises(ValueError, match='if __name__ == "__main__"'):
        build_model(f"{script}:tiny_cnn", 10, 28)


def test_a_script_that_trains_unguarded_is_told_to_guard_it_in_a_worker(tmp_path):
    """multiprocessing runs the parent's script again in each new worker (as __mp_main__): the second train call
    must not start a run inside the worker, and the user must read why the workers died."""
    import subprocess

    script = tmp_path / "unguarded.py"
    options = ", ".join(f"{k}={v!r}" for k, v in {**SMALL, "workers": 2, "worker_kind": "process",
                                                  "max_restarts": 0, "out": str(tmp_path / "run")}.items())
    script.write_text(UNGUARDED.format(options=options))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode != 0
    assert 'put the script\'s training call under `if __name__ == "__main__":`' in done.stderr
    assert "RuntimeError: training failed" in done.stderr


def test_load_names_a_damaged_file_of_a_finished_run(user_module, tmp_path):
    """The files are written whole; damage after the run (a copy cut short, an edit) must be named, not surface
    as torch's bare 'Invalid argument' or a JSON decoder's position."""
    from auglocal.engine.atomic import DamagedFileError

    run = auglocal.train("mynets:tiny_cnn", Pixels(24, 0), Pixels(8, 1), sequential=True, threads=1,
                         out=str(tmp_path / "run"), **SMALL).run_dir
    assert auglocal.load(run)(Pixels(2, 5).images).shape == (2, 4)
    whole = (run / "model.pt").read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", b"not a torch file"):
        (run / "model.pt").write_bytes(damaged)
        with pytest.raises(DamagedFileError, match="model.pt is damaged"):
            auglocal.load(run)
    (run / "model.pt").write_bytes(whole)
    (run / "summary.json").write_text('{"best_accuracy": 5')
    with pytest.raises(ValueError, match="summary.json is damaged"):
        auglocal.load(run)
