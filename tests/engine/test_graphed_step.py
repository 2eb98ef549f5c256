"""--cuda-graphs' logic on the CPU (engine/graphed_step.py): when a step is captured, replayed or run eagerly, what
is copied into the static buffers, and that the graphed step computes bitwise what the eager one does. A double
stands for torch.cuda.CUDAGraph: capture records the function (a real capture runs no kernel either), replay
runs it, so every value a replay produces comes from the static buffers as on a GPU."""

from __future__ import annotations

import pytest
import torch
from auglocal.engine.config import RunConfig, build_network, optim_and_schedule, resolve
from auglocal.engine.data import build_dataset
from auglocal.engine.graphed_step import GraphedStep, why_not_graphed
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.precision import Kernels
from auglocal.engine.stage import Stage


class FakeGraph:
    fn = None


class FakeGraphs:
    """The backend double: counts captures and replays, and can refuse a capture like an op that cannot be."""

    def __init__(self, fail: Exception | None = None):
        self.fail, self.captured, self.replayed, self.shared = fail, 0, 0, []

    def new(self):
        return FakeGraph()

    def capture(self, graph, fn, share=None):
        if self.fail is not None:
            raise self.fail
        graph.fn = fn
        self.captured += 1
        self.shared.append(share)

    def replay(self, graph):
        self.replayed += 1
        graph.fn()


def network(model="resnet20", **kw):
    data = build_dataset("synthetic", seed=1, input_size=8, num_classes=4, train_size=32, test_size=8)
    cfg = resolve(RunConfig(model=model, d=3, dataset="synthetic", epochs=3, batch_size=4, input_size=8,
                            num_classes=4, seed=5, **kw), data)
    model_, aux = build_network(cfg, data)
    return cfg, data, build_local_modules(model_, aux)


def stage_of(cfg, modules, picked, **kw) -> Stage:
    optim, schedule = optim_and_schedule(cfg)
    return Stage([modules[i] for i in picked], optim, schedule, seed=cfg.seed, kernels=Kernels.from_config(cfg), **kw)


def state(stage: Stage) -> list[torch.Tensor]:
    out = [t for m in stage.modules for t in [*m.parameters(), *m.buffers()]]
    return out + [s["momentum_buffer"] for s in stage.optimizer.state.values()]


def batches(data, sizes):
    for i, n in enumerate(sizes):
        x, y = data.train_batch(5, i // 8, i % 8, 4)
        yield x[:n], y[:n]


@pytest.mark.parametrize("picked", [[0, 1, 2], [3, 4, 5, 6, 7]])   # a first stage and the top one
def test_the_graphed_step_is_bitwise_the_eager_one(picked):
    """Steps of one epoch, a partial minibatch, the next epoch (another learning rate): same weights, buffers,
    momentum, outputs, losses and hits as the eager step, with graphs replayed where the shapes allowed."""
    cfg, data, mods_a = network()
    mods_b = network()[2]
    eager, graphed = stage_of(cfg, mods_a, picked), stage_of(cfg, mods_b, picked)
    lines: list[str] = []
    backend = FakeGraphs()
    g = GraphedStep.install(graphed, backend=backend, say=lines.append)
    first = picked[0] == 0
    sent = {"eager": [], "graphed": []}
    plan = [(0, 4)] * 5 + [(0, 3)] + [(0, 4)] * 2 + [(1, 4)] * 4
    shape = None if first else _input_shape(mods_a, picked[0])
    for step, ((epoch, n), (x, y)) in enumerate(zip(plan, batches(data, [n for _, n in plan]), strict=True)):
        h = x if first else torch.randn(n, *shape, generator=torch.Generator().manual_seed(step))
        for stage, name in ((eager, "eager"), (graphed, "graphed")):
            if stage.epoch != epoch:
                stage.set_epoch(epoch)
            res = stage.train_step(h, y, x if stage.needs_input else None, step=step,
                                   emit=lambda t, name=name: sent[name].append(t.clone()))
            stage._last = res
            if step in (1, 9):            # test batches between steps: eval mode right before a capture
                stage._eval = stage.eval_step(h)
        a, b = eager._last, graphed._last
        if step in (1, 9):
            assert torch.equal(eager._eval, graphed._eval)
        assert torch.equal(a.output, b.output)
        assert a.loss_values() == b.loss_values()
        assert (a.correct is None) == (b.correct is None) and (a.correct is None or int(a.correct) == int(b.correct))
        assert all(torch.equal(p, q) for p, q in zip(state(eager), state(graphed), strict=True))
    assert eager.update_counts == graphed.update_counts and eager.last_applied == graphed.last_applied
    assert len(sent["eager"]) == len(sent["graphed"]) and all(
        torch.equal(p, q) for p, q in zip(sent["eager"], sent["graphed"], strict=True))
    # epoch 0: 2 eager warm-up steps, a capture, replays; the partial minibatch eager; epoch 1: a new learning
    # rate: 2 eager steps, a capture, replays
    assert backend.captured == 6 and g.replays == 3 + 2 + 2
    assert backend.shared[1] is not None and backend.shared[0] is None     # later graphs share the first's pool
    assert sum("differs from the captured (4," in line for line in lines) == 1
    assert sum(line.startswith("cuda graphs: captured") for line in lines) == 1   # said once per shape


def _input_shape(modules, first):
    x, _ = build_dataset("synthetic", seed=1, input_size=8, num_classes=4, train_size=8, test_size=8).train_batch(
        0, 0, 0, 2)
    with torch.no_grad():
        for m in modules[:first]:
            x = m(x)
    return tuple(x.shape[1:])


def test_inputs_are_copied_into_the_same_static_buffers():
    cfg, data, mods = network()
    stage = stage_of(cfg, mods, [0, 1])
    g = GraphedStep.install(stage, backend=FakeGraphs(), warmup=0, say=lambda line: None)
    buffers = None
    for step, (x, y) in enumerate(batches(data, [4, 4, 4])):
        stage.train_step(x, y, step=step)
        assert torch.equal(g.static["h"], x) and torch.equal(g.static["y"], y)
        assert buffers is None or (g.static["h"] is buffers[0] and g.static["y"] is buffers[1])
        assert g.static["h"].data_ptr() != x.data_ptr()          # a copy: the graph reads its own buffer
        buffers = (g.static["h"], g.static["y"])
    assert g.replays == 3


def test_a_capture_that_fails_says_one_line_and_steps_stay_eager():
    cfg, data, mods_a = network()
    eager, graphed = stage_of(cfg, mods_a, [0, 1]), stage_of(cfg, network()[2], [0, 1])
    lines: list[str] = []
    error = RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors ...")
    g = GraphedStep.install(graphed, backend=FakeGraphs(fail=error), say=lines.append)
    for step, (x, y) in enumerate(batches(data, [4] * 5)):
        a, b = eager.train_step(x, y, step=step), graphed.train_step(x, y, step=step)
        assert torch.equal(a.output, b.output)
    assert all(torch.equal(p, q) for p, q in zip(state(eager), state(graphed), strict=True))
    assert g.replays == 0 and g.disabled.startswith("capture failed (RuntimeError: operation not permitted")
    assert len(lines) == 1 and "capture failed" in lines[0] and "eager steps" in lines[0] and "\n" not in lines[0]


def test_steps_a_graph_cannot_hold_run_eagerly_from_the_start():
    cfg, _, mods = network()
    assert why_not_graphed(stage_of(cfg, mods, [0, 1])) is None
    assert "--nonfinite skip" in why_not_graphed(stage_of(cfg, mods, [0, 1], nonfinite="skip"))
    bf16 = stage_of(cfg, mods, [0, 1])
    bf16.kernels = Kernels(bf16.kernels.memory_format, "bf16")
    assert "--precision bf16" in why_not_graphed(bf16)
    threads = stage_of(cfg, mods, [0, 1])
    threads.rng_lock = object()
    assert "thread workers" in why_not_graphed(threads)
    drop = stage_of(cfg, mods, [0, 1])
    drop._random = [True, False]
    lines: list[str] = []
    backend = FakeGraphs()
    GraphedStep.install(drop, backend=backend, say=lines.append)
    x, y = next(batches(build_dataset("synthetic", seed=1, input_size=8, num_classes=4, train_size=8,
                                      test_size=8), [4]))
    for step in range(4):
        drop.train_step(x, y, step=step)
    assert backend.captured == 0 and lines == ["cuda graphs: off: a module draws random numbers (seeded per step on "
                                               "the host); eager steps"]
