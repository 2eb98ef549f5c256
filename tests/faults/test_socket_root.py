"""The socket root is private and unpredictable (issue 22 case 5): another local user who creates the old
predictable `<temp dir>/auglocal-<uid>` first (mode 0777, or as a symlink) no longer blocks a run; a bad
$AUGLOCAL_SOCKET_ROOT is one line, exit 2, before the run folder is claimed; --cleanup still finds the folder
of a launcher killed outright, and leaves a live launcher's and another user's alone."""

from __future__ import annotations

import contextlib
import io
import multiprocessing.util
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from auglocal.launch.backends.one_host.sockets import ROOT_VAR, make_socket_dir, remove_socket_dir
from auglocal.launch.cli import main

from tests.faults.support import assert_no_tagged, new_tag, one_line_exit, run_cli, small_flags

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a folder of another user needs root")


@pytest.fixture
def private_temp(tmp_path, monkeypatch) -> Path:
    """This process and the runs it starts use a temp dir of their own, without $AUGLOCAL_SOCKET_ROOT and
    $XDG_RUNTIME_DIR: the default socket root. A short path (ipc:// paths are limited to about 100 characters)."""
    multiprocessing.util.get_temp_dir()      # the forkserver's listener stays in the real temp dir (cached)
    temp = Path(tempfile.mkdtemp(prefix="alt-"))
    monkeypatch.delenv(ROOT_VAR)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


def ours(temp: Path) -> list[str]:
    """What runs of this user left in the temp dir (multiprocessing's own pymp-* folders aside)."""
    return sorted(p.name for p in temp.iterdir() if p.name.startswith(f"auglocal-{os.getuid()}-"))


def plant(path: Path, how: str) -> None:
    """What a hostile local user leaves at `path`: their own 0777 folder, or a symlink to their folder."""
    if how == "others-0777":
        path.mkdir()
        os.chown(path, NOBODY, NOBODY)
        path.chmod(0o777)
    else:
        target = path.with_name("elsewhere")
        target.mkdir(mode=0o700)
        path.symlink_to(target)


@pytest.mark.parametrize("how", [pytest.param("others-0777", marks=as_root), "symlink"])
def test_a_predictable_root_planted_by_another_user_does_not_block_a_run(how, private_temp, tmp_path, capsys):
    planted = private_temp / f"auglocal-{os.getuid()}"
    plant(planted, how)
    out = tmp_path / "run"
    assert main([str(a) for a in small_flags(out, "--workers", "2", "--max-steps", "2")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert (out / "summary.json").is_file()
    assert ours(private_temp) == []                       # the run's private folders went with it
    info = planted.lstat()                                # the planted path is untouched
    if how == "others-0777":
        assert info.st_uid == NOBODY and stat.S_IMODE(info.st_mode) == 0o777 and not os.listdir(planted)
    else:
        assert stat.S_ISLNK(info.st_mode) and not os.listdir(planted)


def test_the_default_socket_folder_is_fresh_private_and_removed(private_temp):
    path = Path(make_socket_dir("0123456789ab"))
    try:
        parent = path.parent
        assert parent.parent == private_temp and parent.name != f"auglocal-{os.getuid()}"
        assert parent.name.startswith(f"auglocal-{os.getuid()}-{os.getpid()}-")
        for folder in (parent, path):
            info = folder.lstat()
            assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    finally:
        remove_socket_dir(str(path))
    assert ours(private_temp) == []


def _bad_root(kind: str, tmp_path: Path) -> Path:
    root = tmp_path / "sockets"
    if kind == "file":
        root.write_text("not a folder")
    elif kind == "symlink":
        (tmp_path / "real").mkdir(mode=0o700)
        root.symlink_to(tmp_path / "real")
    elif kind == "group-writable":
        root.mkdir()
        root.chmod(0o770)
    else:
        root.mkdir()
        os.chown(root, NOBODY, NOBODY)
        root.chmod(0o777)
    return root


@pytest.mark.parametrize("kind, words", [
    ("file", "is not a folder"),
    ("symlink", "is a symlink"),
    ("group-writable", "is another user's or writable by others"),
    pytest.param("others-0777", "is another user's or writable by others", marks=as_root),
])
def test_a_bad_socket_root_is_one_line_before_the_run_folder(kind, words, tmp_path, capsys, monkeypatch):
    root = _bad_root(kind, tmp_path)
    monkeypatch.setenv(ROOT_VAR, str(root))
    out = tmp_path / "run"
    line = one_line_exit(small_flags(out, "--workers", "2", "--max-steps", "2"), capsys)
    assert line.startswith(f"auglocal-launch: error: ${ROOT_VAR} {root} {words}"), line
    assert not out.exists()                               # no run.lock: checked before the claim
    assert one_line_exit(["--cleanup"], capsys).startswith(f"auglocal-launch: error: ${ROOT_VAR} {root}")


def test_a_socket_root_too_long_for_ipc_paths_is_one_line_under_the_default_transport(tmp_path, capsys,
                                                                                      monkeypatch):
    """The default --transport auto is ipc on one host, so a root too long for ipc:// paths is refused before
    the claim then too (before, only an explicit --transport ipc was checked there; the default failed later,
    and the claim's roll-back removed the folder)."""
    root = tmp_path / ("r" * 40) / ("o" * 40)
    root.mkdir(parents=True, mode=0o700)
    monkeypatch.setenv(ROOT_VAR, str(root))
    out = tmp_path / "run"
    line = one_line_exit(small_flags(out, "--workers", "2", "--max-steps", "2"), capsys)
    assert line.startswith(f"auglocal-launch: error: socket folder parent {root} is too long"), line
    assert not out.exists()


def _dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _cleanup_removes_only(temp: Path, stale: str) -> None:
    """--cleanup removes `stale` (this user's, its launcher gone) and leaves a live launcher's folder and one
    that is not private (another user's, as root) alone."""
    live = Path(tempfile.mkdtemp(prefix=f"auglocal-{os.getuid()}-{os.getpid()}-", dir=temp))
    others = temp / f"auglocal-{os.getuid()}-{_dead_pid()}-x"
    others.mkdir()
    if os.geteuid() == 0:
        os.chown(others, NOBODY, NOBODY)                  # another user's: never touched
    else:
        others.chmod(0o777)                               # not private: never touched either
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--cleanup"]) == 0
    assert printed.getvalue().splitlines() == [f"removed stale socket folder {temp / stale}",
                                               "auglocal-launch --cleanup: removed 1 stale socket folder(s)"]
    assert ours(temp) == sorted([live.name, others.name])


def test_cleanup_finds_a_dead_launchers_folder_and_only_that(private_temp):
    """The quick form: the folder a launcher (now dead) made the way make_socket_dir does."""
    stale = private_temp / f"auglocal-{os.getuid()}-{_dead_pid()}-abcdefgh"
    stale.mkdir(mode=0o700)
    (stale / "0123456789ab-abcdefgh").mkdir(mode=0o700)
    _cleanup_removes_only(private_temp, stale.name)


@pytest.mark.slow   # a real run SIGKILLed mid-way (~15 s); the quick form above runs by default
def test_cleanup_finds_a_killed_launchers_folder_and_only_that(private_temp, tmp_path):
    tag = new_tag()
    proc = run_cli(small_flags(tmp_path / "run", "--workers", "2", "--inject-fault", "kill-coordinator:step=2"), tag)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert_no_tagged(tag)
    stale = ours(private_temp)
    assert len(stale) == 1, stale                         # the killed launcher's, named after its dead pid
    _cleanup_removes_only(private_temp, stale[0])
