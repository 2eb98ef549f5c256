"""What a pipelined run shows besides its weights: TensorBoard scalars per layer, worker and epoch, and the
pictures of its own story (local losses per layer over time, worker usage over time)."""

import json

import pytest
from auglocal.engine.config import build_network
from auglocal.engine.local_module import build_local_modules
from auglocal.launch.report.plots import CURVES_SIZE, DPI, LOCAL_LOSSES_SIZE, WORKERS_SIZE
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline

from tests.faults.support import small_run
from tests.launch.pictures import png_size, tensorboard_images, tensorboard_scalars

pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard: pip install -e '.[dev]'")

WORKERS = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The fault suite's small run (12 minibatches over 2 epochs, a checkpoint every 2) on 2 workers."""
    out = tmp_path_factory.mktemp("story") / "run"
    cfg, data = small_run()
    opts = PipelineOptions(workers=str(WORKERS), balance="flops", threads=1, checkpoint_every=2)
    assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    modules = build_local_modules(*build_network(cfg, data))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, [m.layer_ids[0] for m in modules], rows


def test_tensorboard_has_every_layer_worker_and_epoch(run):
    out, layers, rows = run
    scalars = tensorboard_scalars(out / "tensorboard")
    steps = [r["global_step"] for r in rows if r["kind"] == "step"]
    assert steps == list(range(1, 13))
    for tag in ("train/loss", "train/accuracy", "train/lr", "train/images_per_s"):
        assert [s for s, _ in scalars[tag]] == steps, tag
    step_rows = [r for r in rows if r["kind"] == "step"]
    for layer in layers:                              # every local layer's loss, as metrics.jsonl has it
        logged = [(r["global_step"], r["local_losses"][str(layer)]) for r in step_rows
                  if str(layer) in r["local_losses"]]
        assert logged, f"no loss of layer {layer} in any step row"
        got = scalars[f"local_loss/layer_{layer:03d}"]
        assert [s for s, _ in got] == [s for s, _ in logged], layer
        assert [v for _, v in got] == pytest.approx([v for _, v in logged], rel=1e-6), layer
    assert not [t for t in scalars if t.startswith("local_loss/")
                and int(t.rsplit("_", 1)[1]) not in layers]
    samples = [r for r in rows if r["kind"] == "workers"]
    assert samples
    for rank in range(WORKERS):
        busy = scalars[f"workers/busy/worker_{rank}"]
        assert [s for s, _ in busy] == [r["global_step"] for r in samples]
        assert all(0.0 <= v <= 1.0 for _, v in busy)
    assert "workers/queue/worker_1" in scalars and "workers/queue/worker_0" not in scalars
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [v for _, v in scalars["epoch/test_accuracy"]] == pytest.approx([e["test_accuracy"] for e in epochs])
    assert len(scalars["epoch/train_loss"]) == len(epochs) == 2
    checkpoints = scalars["events/checkpoint"]
    assert [int(v) for _, v in checkpoints] == list(range(1, len(checkpoints) + 1)) and len(checkpoints) >= 6
    assert "events/restarts" not in scalars
    assert {"pictures/curves", "pictures/local_losses", "pictures/workers"} <= set(tensorboard_images(
        out / "tensorboard"))


def test_pictures_are_images_of_their_size(run):
    out, _, _ = run
    for name, (w, h) in (("curves.png", CURVES_SIZE), ("local_losses.png", LOCAL_LOSSES_SIZE),
                         ("workers.png", WORKERS_SIZE)):
        assert png_size(out / name) == (w * DPI, h * DPI), name
        assert (out / name).stat().st_size > 5000, name


def test_worker_rows_describe_every_worker(run):
    _, _, rows = run
    samples = [r for r in rows if r["kind"] == "workers"]
    assert all(len(r["busy"]) == WORKERS and len(r["queue"]) == WORKERS and r["queue"][0] is None
               for r in samples)
    assert all(0 <= r["queue"][1] <= 3 for r in samples)          # bounded by the window (2) + the one running
    assert [r["seconds"] for r in samples] == sorted(r["seconds"] for r in samples)
