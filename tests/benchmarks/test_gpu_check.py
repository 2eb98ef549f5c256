"""benchmarks/gpu_check.sh, the one-shot GPU check, run dry on CPU (GPU_CHECK_DRY=1): every step, tiny sizes.

A bad flag, import or path in the script must fail here rather than in the GPU machine's few minutes. The dry
run goes without mlxtend and scikit-learn (blocked in every process it starts), as the GPU image does. Also the
wheel step (benchmarks/gpu_deps.py): it installs only what the machine lacks and names what does not import.
"""

import base64
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from benchmarks import gpu_deps
from tests.blocked_imports import sitecustomize_dir

REPO = Path(__file__).resolve().parents[2]
STEPS = ["deps", "gpu_tests", "streams", "transport", "fault", "sanitizer"]
BUDGET_S = 480


QUICK = ["deps", "gpu_tests", "streams", "transport"]   # the default run's dry run; the slow one runs all six
RERUNS = {"fault": 1, "sanitizer": 2}                  # steps that re-run CPU checks the suite already makes


def dry_run(tmp_path, steps: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    """gpu_check.sh with GPU_CHECK_DRY=1 and GPU_CHECK_STEPS=steps, without mlxtend and scikit-learn (blocked in
    every process it starts, as on the GPU image): its completed process and output folder."""
    site = sitecustomize_dir(tmp_path / "site", "mlxtend", "sklearn")
    env = {**os.environ, "GPU_CHECK_DRY": "1", "GPU_CHECK_STEPS": " ".join(steps), "PYTHONPATH": str(site)}
    env.pop("AUGLOCAL_GPU_TEST_DEVICE", None)
    probe = subprocess.run([sys.executable, "-c", "import mlxtend"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr     # the block reaches subprocesses
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=840)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    return proc, out


def assert_plan_and_summary(proc, out: Path, steps: list[str]) -> dict[str, str]:
    """The plan lists all six steps within the budget; summary.md has a row per step, exit 0 for each that ran
    and "not run" for the others. The plan's command per step."""
    plan = dict(re.findall(r"^  (\w+) +(\d+) s  ", proc.stdout, flags=re.M))
    assert list(plan) == STEPS
    assert sum(map(int, plan.values())) <= BUDGET_S
    rows = [line.split("|")[1:4] for line in (out / "summary.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| step")]
    assert [(name.strip(), budget.strip(), code.strip()) for name, budget, code in rows] == [
        (name, plan[name], "0" if name in steps else "not run") for name in STEPS]
    return dict(re.findall(r"^  (\w+) +\d+ s  (.*)$", proc.stdout, flags=re.M))


def assert_cpu_steps(out: Path, gpu_tests_ran_at_least: int) -> None:
    assert "every import works" in (out / "imports.md").read_text()
    suite = ET.parse(out / "gpu_tests.xml").getroot().find("testsuite")
    ran = int(suite.get("tests")) - int(suite.get("skipped"))
    assert ran >= gpu_tests_ran_at_least and int(suite.get("failures")) == int(suite.get("errors")) == 0
    table = (out / "gpu_streams.md").read_text()
    for row in ("sequential BP", "sequential AugLocal", "1 stream worker(s)", "2 stream worker(s)"):
        assert f"| 8 | {row}" in table or f"| 8 | pipeline, {row}" in table, table
    assert "images/s over sequential AugLocal" in table
    assert "| ipc link |" in (out / "transport_gpu.md").read_text()


@pytest.mark.timeout(600)
def test_dry_run_runs_the_cpu_steps_and_the_reruns_select_their_tests(tmp_path):
    """The default run's dry run: deps, gpu_tests, streams and transport on CPU. The fault and sanitizer steps
    re-run CPU checks the default suite already makes (a worker killed and recovered bitwise; thread workers and
    gloo-linked torchrun ranks equal to the sequential trainer) at 45 s together, so here their exact pytest
    commands, taken from the printed plan, only collect: each selects its tests, no flag or path is wrong. The
    slow test below runs all six."""
    proc, out = dry_run(tmp_path, QUICK)
    commands = assert_plan_and_summary(proc, out, QUICK)
    assert_cpu_steps(out, gpu_tests_ran_at_least=1)
    env = {**os.environ, "AUGLOCAL_GPU_TEST_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    collected = collect_only({step: commands[step] for step in RERUNS}, env)
    assert list(collected) == list(RERUNS)
    for step, count in RERUNS.items():
        assert re.search(rf"^{count}/\d+ tests? collected|^{count} tests? collected", collected[step], flags=re.M), \
            (step, collected[step][-2000:])


PYTEST = ["python3", "-m", "pytest"]


def collect_only(commands: dict[str, str], env: dict) -> dict[str, str]:
    """Each plan command (`[env -u VAR] python3 -m pytest ARGS`) with --collect-only, all in one Python (one torch
    import, not one per command): per step, its output; each pytest must exit 0."""
    runs = {}
    for step, command in commands.items():
        words = shlex.split(command.removeprefix("env -u TORCH_CUDA_SANITIZER "))
        assert words[:3] == PYTEST, command          # the rest is what the step's own pytest would read
        runs[step] = [*words[3:], "--collect-only"]
    script = ("import contextlib, io, json, sys, pytest\n"
              "out = {}\n"
              "for step, args in json.loads(sys.argv[1]).items():\n"
              "    buf = io.StringIO()\n"
              "    with contextlib.redirect_stdout(buf):\n"
              "        code = int(pytest.main(args))\n"
              "    out[step] = [code, buf.getvalue()]\n"
              "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(runs)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    for step, (code, text) in results.items():
        assert code == 0, (step, text[-3000:])
    return {step: text for step, (_, text) in results.items()}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dry_run_runs_every_step_on_cpu_within_the_budgets(tmp_path):
    proc, out = dry_run(tmp_path, STEPS)
    assert_plan_and_summary(proc, out, STEPS)
    assert_cpu_steps(out, gpu_tests_ran_at_least=1)
    sanitized = (out / "sanitizer.log").read_text()    # the dry run leaves the two parity tests to this step
    assert re.search(r"^2 passed, \d+ deselected", sanitized, flags=re.M), sanitized[-2000:]
    suite = ET.parse(out / "gpu_tests.xml").getroot().find("testsuite")
    ran = int(suite.get("tests")) - int(suite.get("skipped"))
    assert ran + 2 >= 3                                # at least three GPU tests ran on CPU, each once
    assert "1 passed" in (out / "fault.log").read_text()


def test_dry_run_needs_an_output_folder():
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "GPU_CHECK_DRY": "1"})
    assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr


def make_wheel(folder: Path, dist: str, module: str, body: str) -> Path:
    """A minimal pure-Python wheel of distribution `dist` (version 1.0) holding `module`/__init__.py."""
    files = {f"{module}/__init__.py": body,
             f"{dist}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n",
             f"{dist}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                           "Tag: py3-none-any\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}-1.0.dist-info/RECORD,,")
    files[f"{dist}-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = folder / f"{dist}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.fixture
def wheels(tmp_path):
    """A wheel this interpreter lacks, and one of an installed distribution (msgpack) that must not be used."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder, "auglocal_probe", "auglocal_probe", "VALUE = 42\n")
    make_wheel(folder, "msgpack", "msgpack", "raise ImportError('the machine has msgpack: never installed')\n")
    return folder


def test_only_wheels_the_machine_lacks_are_installed_and_missing_imports_are_named(wheels, tmp_path,
                                                                                    monkeypatch, capsys):
    assert [w.name for w in gpu_deps.missing_wheels(wheels)] == ["auglocal_probe-1.0-py3-none-any.whl"]
    monkeypatch.setattr(gpu_deps, "THIRD_PARTY", {"msgpack": "msgpack", "auglocal_probe": "auglocal-probe"})
    monkeypatch.setattr(gpu_deps, "PROJECT", ("no_such_module_of_auglocal",))
    monkeypatch.setattr(sys, "path", list(sys.path))
    target, report = tmp_path / "site", tmp_path / "imports.md"
    assert gpu_deps.main(["--wheels", str(wheels), "--target", str(target), "--report", str(report)]) == 1
    text = report.read_text()
    assert (target / "auglocal_probe" / "__init__.py").is_file() and not (target / "msgpack").exists()
    assert "MISSING no_such_module_of_auglocal: ModuleNotFoundError" in text
    assert "MISSING msgpack" not in text and "MISSING auglocal_probe" not in text
    assert sys.modules["auglocal_probe"].VALUE == 42
    del sys.modules["auglocal_probe"]


def test_wheels_unpack_without_pip(wheels, tmp_path):
    target = tmp_path / "site"
    target.mkdir()
    gpu_deps.unpack(wheels / "auglocal_probe-1.0-py3-none-any.whl", target)
    assert (target / "auglocal_probe" / "__init__.py").read_text() == "VALUE = 42\n"
    assert (target / "auglocal_probe-1.0.dist-info" / "METADATA").is_file()
