"""CUDA graphs for a stage's train step (--cuda-graphs): capture it once its shapes are static, then replay it.

On a GPU a local module's step takes milliseconds, and launching its few hundred kernels from Python is a large
part of that. A CUDA graph records the kernels once and replays them with one launch. What a graph needs:
static shapes and addresses (inputs are copied into buffers the graph reads), no host synchronisation and no
host-side decision inside, and the same work every time. So a stage's step is captured as three graphs that
share one memory pool, replayed in order (torch.cuda.graphs, "whole-network capture" and pool sharing):

  head: zero the gradients, every module but the last fully (forward, loss, backward), the last one's forward;
        then the output is handed to `emit` (a copy: the next replay overwrites the buffer), as early as the eager
        step sends it;
  tail: the last module's loss and backward, and the folded loss of every module (engine/nonfinite.py);
        then, outside any graph, the one read-back of the non-finite check, as the eager step does;
  update: the optimizer step.

The first `warmup` steps of a shape run eagerly (they are real steps, and they initialise what a capture must not:
cuBLAS handles, the optimizer's momentum buffers); the next one is captured and replayed, and so are all later
steps of the same key (input shapes and learning rate). A step of another key (the last, partial minibatch of an
epoch) runs eagerly; a new learning rate (a new epoch) is captured anew once it has run `warmup` steps. Where a
graph cannot hold the step it runs eagerly for good, said in one line: a module that draws random numbers
(dropout is seeded per step on the host), fp16 loss scaling or --nonfinite skip (host decisions inside the step),
autocast (its weight cache), threads sharing the process (their kernels would join the capture), or a capture
that raised (an op that synchronises or cannot be captured). Results do not change: a replay runs the kernels
the capture recorded on the same values.

The graph itself comes from a `backend` (`CudaGraphs` on a GPU); tests drive the same logic on the CPU with a
double that records the captured functions and runs them on replay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

WARMUP_STEPS = 2


class CudaGraphs:
    """torch.cuda.CUDAGraph, captured on torch's side stream, graphs after the first sharing its memory pool."""

    def new(self):
        return torch.cuda.CUDAGraph()

    def capture(self, graph, fn: Callable[[], None], share=None) -> None:
        with torch.cuda.graph(graph, pool=share.pool() if share is not None else None):
            fn()

    def replay(self, graph) -> None:
        graph.replay()


def why_not_graphed(stage) -> str | None:
    """Why `stage`'s step cannot be a graph at all (None: it can)."""
    if any(stage._random):
        return "a module draws random numbers (seeded per step on the host)"
    if stage.scalers is not None:
        return "fp16 loss scaling decides on the host inside the step"
    if stage.kernels.precision != "fp32":
        return f"--precision {stage.kernels.precision}: autocast's weight cache cannot be captured"
    if stage.nonfinite == "skip":
        return "--nonfinite skip restores a module's buffers on the host inside the step"
    if stage.rng_lock is not None:
        return "thread workers share the process: their kernels would join the capture"
    return None


class GraphedStep:
    """A stage's `train_step` that replays captured graphs where it can (install with `GraphedStep.install`)."""

    def __init__(self, stage, backend=None, warmup: int = WARMUP_STEPS, say: Callable[[str], None] = print):
        self.stage, self.backend, self.warmup, self.say = stage, backend or CudaGraphs(), warmup, say
        self.eager = type(stage).train_step.__get__(stage)
        self.disabled = why_not_graphed(stage)
        self.key = None             # key of the captured graphs
        self.graphs = None          # (head, tail, update)
        self.static: dict = {}      # input buffers the graphs read, outputs they write
        self.seen, self.streak = None, 0
        self.said: set[str] = set()
        self.replays = 0
        if self.disabled:
            self._say(f"off: {self.disabled}; eager steps")

    @classmethod
    def install(cls, stage, **kw) -> GraphedStep:
        graphed = cls(stage, **kw)
        stage.train_step = graphed.train_step
        return graphed

    def _say(self, line: str) -> None:
        if line not in self.said:
            self.said.add(line)
            self.say(f"cuda graphs: {line}")

    @staticmethod
    def _shape(t: torch.Tensor | None):
        return None if t is None else (tuple(t.shape), t.dtype)

    def train_step(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None, *, step: int = 0,
                   emit: Callable[[torch.Tensor], None] | None = None):
        if self.disabled:
            return self.eager(h, y, x, step=step, emit=emit)
        lr = tuple(g["lr"] for g in self.stage.optimizer.param_groups)
        key = (self._shape(h), self._shape(y), self._shape(x), lr)
        if key != self.key:
            self.streak = self.streak + 1 if key == self.seen else 1
            self.seen = key
            if self.streak <= self.warmup:
                if self.key is not None and key[3] == self.key[3]:
                    self._say(f"input shape {key[0][0]} differs from the captured {self.key[0][0]} (a partial "
                              "minibatch?): such steps run eagerly")
                return self.eager(h, y, x, step=step, emit=emit)
            try:
                self._capture(h, y, x, key)
            except Exception as err:     # an op that cannot be captured: eager from now on
                why = " ".join(str(err).split())[:200]      # CUDA errors span lines: the report is one
                self.disabled = f"capture failed ({type(err).__name__}: {why})"
                self.graphs, self.key = None, None
                if torch.cuda.is_available():
                    with contextlib.suppress(RuntimeError):   # a sticky CUDA error shows in the eager step
                        torch.cuda.synchronize()
                self._say(f"off: {self.disabled}; eager steps")
                return self.eager(h, y, x, step=step, emit=emit)
        self.seen, self.streak = None, 0     # a replay ends any other shape's run of steps
        return self._replay(h, y, x, step, emit)

    # --- capture ---------------------------------------------------------------------------------------------
    def _capture(self, h, y, x, key) -> None:
        st, s = self.stage, {}
        st.modules.train()     # a capture records the kernels of the mode it runs in: an eval step may precede it
        s["h"] = torch.empty_like(h, device=st.device)
        s["y"] = torch.empty_like(y, device=st.device)
        s["x"] = torch.empty_like(x, device=st.device) if x is not None else None
        mods, kernels = list(st.modules), st.kernels

        def head() -> None:
            st.optimizer.zero_grad(set_to_none=True)
            hh, yy = s["h"], s["y"]
            xx = kernels.layout(s["x"]) if s["x"] is not None else None
            s["losses"], s["checked"] = [], []
            for module in mods[:-1]:
                out = module(kernels.layout(hh))
                handoff = kernels.handoff(out) if not module.is_top else out.detach()
                self._backward(module, module.loss(out, yy, xx), s)
                hh = handoff
            last = mods[-1]
            s["last_out"] = last(kernels.layout(hh))
            s["handoff"] = kernels.handoff(s["last_out"]) if not last.is_top else s["last_out"].detach()
            s["xx"] = xx

        def tail() -> None:
            last = mods[-1]
            self._backward(last, last.loss(s["last_out"], s["y"], s["xx"]), s)
            s["correct"] = (s["last_out"].detach().argmax(1) == s["y"]).sum() if last.is_top else None

        def update() -> None:
            st.optimizer.step()

        graphs = tuple(self.backend.new() for _ in range(3))
        for graph, fn in zip(graphs, (head, tail, update), strict=True):
            self.backend.capture(graph, fn, share=None if graph is graphs[0] else graphs[0])
        self.graphs, self.static, self.key = graphs, s, key
        self._say(f"captured the step of input shape {key[0][0]}")

    def _backward(self, module, loss: torch.Tensor, s: dict) -> None:
        from auglocal.engine.nonfinite import folded_loss

        loss.backward()
        s["losses"].append(loss.detach())
        if self.stage.nonfinite is not None:
            s["checked"].append(folded_loss(loss, list(module.parameters()), check_grads=True))

    # --- replay ----------------------------------------------------------------------------------------------
    def _replay(self, h, y, x, step: int, emit):
        from auglocal.engine.stage import StepResult

        st, s = self.stage, self.static
        head, tail, update = self.graphs
        st.modules.train()
        s["h"].copy_(h, non_blocking=True)
        s["y"].copy_(y, non_blocking=True)
        if s["x"] is not None:
            s["x"].copy_(x, non_blocking=True)
        self.backend.replay(head)
        output = s["handoff"].clone()        # the next replay overwrites the buffer
        if emit is not None and not st.modules[-1].is_top:
            emit(output)
        self.backend.replay(tail)
        result = StepResult(output=output, batch_size=int(y.shape[0]))
        result.losses = {m.layer_ids[0]: loss.clone() for m, loss in zip(st.modules, s["losses"], strict=True)}
        if s["correct"] is not None:
            result.correct = s["correct"].clone()
        if st.nonfinite is not None:
            st._check(result, s["checked"], [], step)     # raises before the update, as the eager step does
        self.backend.replay(update)
        for i in st.update_counts:
            st.update_counts[i] += 1
        st.last_applied = (st.epoch, step)
        self.replays += 1
        return result
