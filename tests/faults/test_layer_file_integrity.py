"""Final layer files are checked before the network is assembled from them: one damaged between the worker's
write and the coordinator's read is refused with one line and exit 1 (never a model.pt built from it), and
`--resume` then recomputes the run's end, bitwise equal to the sequential reference."""

import launch.pipeline
from launch.cli import main
from tests.faults.support import assert_complete, assert_no_orphan_workers, small_flags


def flip_middle(path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_damaged_final_layer_file_is_refused_and_the_run_resumes(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    original = launch.pipeline.assemble

    def assemble(cfg, data, run_dir):
        flip_middle(out / "layers" / "layer_004.pt")
        return original(cfg, data, run_dir)

    monkeypatch.setattr(launch.pipeline, "assemble", assemble)
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

    monkeypatch.setattr(launch.pipeline, "assemble", original)
    code = main(["--resume", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert_complete(reference, out, restarts=0)
    assert_no_orphan_workers()
