"""docs/api.md's examples run exactly as printed: each python block is the file its first line names."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "api.md"
BLOCK = re.compile(r"```python\n# (?P<name>[\w.]+\.py)\n(?P<code>.*?)```", re.S)


def doc_files() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    files = {m["name"]: f"# {m['name']}\n{m['code']}" for m in BLOCK.finditer(text)}
    assert text.count("```python") == len(files), "every python block of docs/api.md starts with '# <file>.py'"
    return files


def test_the_doc_has_both_examples():
    assert set(doc_files()) == {"my_nets.py", "train_custom.py", "train_vit.py"}


@pytest.mark.parametrize("script", ["train_custom.py", "train_vit.py"])
def test_an_example_runs_as_printed(script, tmp_path):
    for name, code in doc_files().items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}     # this checkout's auglocal, nothing of tmp_path on the path
    proc = subprocess.run([sys.executable, script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracies = re.findall(r"best test accuracy (\d+\.\d)%, run folder (\S+)", proc.stdout)
    assert len(accuracies) == (2 if script == "train_vit.py" else 1), proc.stdout
    for _, folder in accuracies:
        run = tmp_path / folder
        assert (run / "model.pt").is_file() and (run / "data.json").is_file()
    if script == "train_custom.py":
        predicted = re.search(r"predicted \[([\d, ]+)\] true \[([\d, ]+)\]", proc.stdout)
        assert predicted and len(predicted[1].split(",")) == 8, proc.stdout
