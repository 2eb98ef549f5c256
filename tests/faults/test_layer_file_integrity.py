"""Final layer files are checked before the network is assembled from them: one damaged between the worker's
write and the coordinator's read is refused with one line and exit 1 (never a model.pt built from it), and
`--resume` then recomputes the run's end, bitwise equal to the sequential reference."""

import auglocal.launch.run.pipeline
from auglocal.launch.cli import main

from tests.faults.support import assert_complete, assert_no_orphan_workers, small_flags


def flip_middle(path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_damaged_final_layer_file_is_refused_and_the_run_resumes(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    original = auglocal.launch.run.pipeline.assemble

    def assemble(cfg, data, run_dir):
        flip_middle(out / "layers" / "layer_004.pt")
        return original(cfg, data, run_dir)

    monkeypatch.setattr(auglocal.launch.run.pipeline, "assemble", assemble)
    code = main([str(a) for a in small_flags(out, "--workers", "2")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "layer_004.pt" in lines[0] and "damaged" in lines[0], lines[0]
    assert f"--resume {out}" in lines[0]
    assert not (out / "model.pt").exists() and not (out / "summary.json").exists()
    assert_no_orphan_workers()

    monkeypatch.setattr(auglocal.launch.run.pipeline, "assemble", original)
    code = main(["--resume", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert_complete(reference, out, restarts=0)
    assert_no_orphan_workers()


def test_a_checkpoint_damaged_before_a_one_worker_recovery_falls_back(reference, tmp_path, monkeypatch, capfd):
    """The committed checkpoint worker 1 would restart from is damaged when worker 1 dies: it is verified again
    (it was verified only when committed), the whole restart takes the older intact one, and nothing is ever
    loaded from the damaged file."""
    import auglocal.launch.run.recovery
    from auglocal.launch.run.checkpoints import CheckpointStore

    from tests.faults.support import run_in_process

    out = tmp_path / "run"
    damaged = []
    original = auglocal.launch.run.recovery.OneWorkerRecovery.recover

    def recover(self, err):
        if not damaged:
            ckpt = CheckpointStore(out).dir_for(self.committed_id)
            flip_middle(ckpt / "layer_004.pt")
            damaged.append(self.committed_id)
        return original(self, err)

    monkeypatch.setattr(auglocal.launch.run.recovery.OneWorkerRecovery, "recover", recover)
    assert run_in_process(out, "kill:worker=1:step=8", workers="2", recovery="one") == 0
    (newest,) = damaged
    err = capfd.readouterr().err
    s = assert_complete(reference, out, restarts=1)
    (restart,) = s["restarts"]
    assert restart["path"] == "all" and restart["restart_from"] == newest - 1, restart
    assert restart["fallback"].startswith(f"checkpoint {newest} to restart from: layer_004.pt "), restart
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        f"auglocal-launch: checkpoint {newest}: layer_004.pt fails its SHA-256 checksum (damaged); skipped"]
    assert_no_orphan_workers()
