"""auglocal-compare: a tiny grid runs, writes its table and plot, and resumes without rerunning."""

import json

from launch.compare import Cell, main


def test_cell_parsing():
    assert Cell.parse("auglocal:4:0.5") == Cell("auglocal", 4, 0.5)
    assert Cell.parse("dgl").name == "dgl"
    assert Cell.parse("auglocal:3").name == "auglocal-d3"


def test_tiny_grid_writes_table_and_resumes(tmp_path, capsys):
    args = ["--dataset", "digits", "--model", "resnet20", "--cells", "auglocal:2", "--seeds", "1", "2",
            "--epochs", "1", "--max-steps", "2", "--batch-size", "32", "--threads", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| auglocal-d2 |" in table and " ± " in table
    rows = (tmp_path / "table.csv").read_text().splitlines()
    assert len(rows) == 2
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    summary = tmp_path / "runs" / "auglocal-d2-seed2" / "summary.json"
    assert json.loads(summary.read_text())["updates"]
    before = summary.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0                      # everything done: nothing runs again
    assert "seed" not in capsys.readouterr().out.split("#")[0]
    assert summary.stat().st_mtime_ns == before


def test_unknown_rule_is_exit_2(tmp_path):
    assert main(["--cells", "hebbian", "--out", str(tmp_path)]) == 2
