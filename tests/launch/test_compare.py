"""auglocal-compare: a tiny grid runs, writes its table and plot, and resumes without rerunning."""

import json

from auglocal.launch.report.compare import Cell, main


def test_cell_parsing():
    assert Cell.parse("auglocal:4:0.5") == Cell("auglocal", 4, 0.5)
    assert Cell.parse("dgl").name == "dgl"
    assert Cell.parse("auglocal:3").name == "auglocal-d3"


def test_tiny_grid_writes_table_and_resumes(tmp_path, capsys):
    # synthetic data: each cell is an auglocal-launch process of its own, and the data set is all it needs; an
    # embedded set would import scikit-learn and torchvision (seconds) in each of them
    args = ["--dataset", "synthetic", "--train-size", "64", "--test-size", "32", "--model", "resnet20",
            "--cells", "auglocal:2", "--seeds", "1", "2", "--epochs", "1", "--max-steps", "2", "--batch-size", "32",
            "--threads", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| auglocal-d2 |" in table and " ± " in table
    rows = (tmp_path / "table.csv").read_text().splitlines()
    assert len(rows) == 2
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    from auglocal.launch.report.compare import DPI, PLOT_SIZE

    from tests.launch.pictures import png_size

    assert png_size(tmp_path / "accuracy.png") == (PLOT_SIZE[0] * DPI, PLOT_SIZE[1] * DPI)
    summary = tmp_path / "runs" / "auglocal-d2-seed2" / "summary.json"
    assert json.loads(summary.read_text())["updates"]
    before = summary.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0                      # everything done: nothing runs again
    assert "seed" not in capsys.readouterr().out.split("#")[0]
    assert summary.stat().st_mtime_ns == before


def test_the_grids_optimizer_reaches_every_run(tmp_path):
    args = ["--dataset", "synthetic", "--train-size", "16", "--test-size", "8", "--model", "resnet20", "--cells", "bp",
            "--seeds", "1", "--epochs", "1", "--max-steps", "1", "--batch-size", "16", "--threads", "1",
            "--optimizer", "adamw", "--out", str(tmp_path)]
    assert main(args) == 0
    config = json.loads((tmp_path / "runs" / "bp-seed1" / "config.json").read_text())
    assert (config["optimizer"], config["lr"]) == ("adamw", 1e-3)


def test_unknown_rule_is_exit_2(tmp_path):
    assert main(["--cells", "hebbian", "--out", str(tmp_path)]) == 2


def test_accuracy_plot_has_a_line_per_rule_and_its_size(tmp_path):
    from auglocal.launch.report.compare import DPI, PLOT_SIZE, _series, plot

    from tests.launch.pictures import png_size

    def row(cell, rule, d="", tau="", acc=90.0, aux=0.1):
        return {"cell": cell, "rule": rule, "d": d, "tau": tau, "best_mean": acc, "best_std": 0.5,
                "aux_gmacs": aux}

    rows = [row("bp", "bp", aux=0.0), row("dgl", "dgl", acc=85.0, aux=0.01),
            row("auglocal-d4", "auglocal", 4, acc=92.0, aux=0.5), row("auglocal-d2", "auglocal", 2, acc=90.5),
            row("auglocal-d4-tau0", "auglocal", 4, 0.0, acc=92.5, aux=0.9)]
    series = _series(rows)
    assert list(series) == ["bp", "dgl", "AugLocal", "AugLocal tau=0"]
    assert [r["d"] for r in series["AugLocal"]] == [2, 4]
    path = plot(rows, tmp_path, "grid")
    assert png_size(path) == (PLOT_SIZE[0] * DPI, PLOT_SIZE[1] * DPI)
