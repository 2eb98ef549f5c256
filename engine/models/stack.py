"""Any stack of blocks as a LayeredModel: the user's own network, cut where they cut it (docs/method.md, "Stacks of
blocks").

A registered family knows how to rebuild its blocks with other channel counts and strides (`aux_block`). A stack of
arbitrary blocks does not, so its AugLocal aux nets are built the other way round: each selected block is a fresh
copy of the primary block itself, which is only possible where the copy accepts what the aux net feeds it; where
it does not (the selection skipped a block that changes the shape), the model's `block_builder` is asked for a
block that does, and without one the error names the layer and the shapes.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence

import torch
from auglocal.engine.models.base import LayeredModel, LayerInfo
from torch import nn

Shape = tuple[int, ...]
#: block_builder(j, input_shape, output_shape) -> a fresh block taking input_shape (no batch dim) to output_shape
BlockBuilder = Callable[[int, Shape, Shape], nn.Module]

MAP, TOKENS, VECTOR = "map", "tokens", "vector"


def is_block_list(blocks) -> bool:
    """A non-empty list, tuple or ModuleList of modules: what a model function may return as its blocks."""
    return (isinstance(blocks, (list, tuple, nn.ModuleList)) and len(blocks) > 0
            and all(isinstance(b, nn.Module) for b in blocks))


def meta_copy(module: nn.Module) -> nn.Module:
    """An eval-mode copy of `module` whose parameters and buffers are data-free meta tensors.

    Tracing shapes on it costs no arithmetic, no memory and no random numbers (dropout is off in eval mode, and
    meta tensors hold no data), and the real module, its weights and its train/eval flags stay untouched.
    """
    memo: dict[int, object] = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(module, memo).eval()


def meta_output(module: nn.Module, shape: Shape) -> Shape:
    """The per-sample output shape of `module` on a (1, *shape) input, run on a meta copy."""
    with torch.no_grad():
        out = meta_copy(module)(torch.empty((1, *shape), device="meta"))
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"returns a {type(out).__name__}, not a tensor")
    return tuple(int(d) for d in out.shape[1:])


def layout_of(shape: Shape) -> str:
    """'map' for (C, H, W) feature maps, 'tokens' for (N, D) token sequences, 'vector' for (D,) features."""
    return {3: MAP, 2: TOKENS, 1: VECTOR}.get(len(shape), "")


def kind_letters(blocks: Sequence[nn.Module]) -> list[str]:
    """One notation letter per block class: its name's first letter (upper case) unless an earlier class has it,
    then the next of its name's letters still free, then the first free letter of the alphabet. So a ViT's
    EncoderBlock is "E", a user's ResBlock "R", and two classes never share a letter within one model."""
    letters: dict[type, str] = {}
    for block in blocks:
        cls = type(block)
        if cls in letters:
            continue
        taken = set(letters.values())
        candidates = [c.upper() for c in cls.__name__ if c.isalpha()] + [chr(c) for c in range(65, 91)]
        letters[cls] = next(c for c in candidates if c not in taken)
    return [letters[type(b)] for b in blocks]


def reinitialise(module: nn.Module, init: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Fresh weights for `module` in place: `init(module)` when given, else every submodule's own
    `reset_parameters()` (or `_reset_parameters()`, as nn.MultiheadAttention has), children before parents so a
    parent's reset has the last word (MultiheadAttention zeroes its out_proj bias after out_proj's own reset).
    Parameters of a module without either method keep their values. Uses the global torch RNG: seeded, every
    process gets the same weights."""
    if init is not None:
        init(module)
        return module
    for m in reversed(list(module.modules())):
        reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
        if callable(reset):
            reset()
    return module


class BlockStack(LayeredModel):
    """`blocks[0] -> ... -> blocks[L-1] -> head`, every block one local layer, shapes read off a meta forward.

    `in_shapes[j]` / `out_shapes[j]` are block j's per-sample input / output shapes at the model's input size;
    `head_in_shape` is what the head takes. LayerInfo: width = out_channels = C of a (C, H, W) map or D of (N, D)
    tokens (or (D,)), spatial = H or N (1 for (D,)), kind = `kind_letters`, layout = 'map' / 'tokens' / 'vector'.
    """

    family = "stack"
    convention = "cifar"
    aux_downsample = "stride"
    builds_aux_by_copy = True

    def __init__(self, blocks: Sequence[nn.Module], head: nn.Module, *, num_classes: int, input_size: int, name: str,
                 block_builder: BlockBuilder | None = None, in_channels: int = 3,
                 init: Callable[[nn.Module], None] | None = None):
        if not is_block_list(blocks):
            raise ValueError(f"{name}: blocks must be a non-empty list of nn.Module local layers, got "
                             f"{type(blocks).__name__}")
        if not isinstance(head, nn.Module):
            raise ValueError(f"{name}: the head must be an nn.Module, got {type(head).__name__}")
        in_shapes, out_shapes = trace_shapes(list(blocks), head, (in_channels, input_size, input_size), name,
                                             num_classes)
        kinds = kind_letters(blocks)
        info = []
        for j, shape in enumerate(out_shapes):
            layout = layout_of(shape)
            width = shape[0] if layout == MAP else shape[-1]
            spatial = shape[1] if layout == MAP else shape[0] if layout == TOKENS else 1
            info.append(LayerInfo(j, width, width, spatial, kinds[j], layout))
        super().__init__(list(blocks), head, info, num_classes, input_size, name)
        self.in_channels = in_channels
        self.in_shapes, self.out_shapes = in_shapes, out_shapes
        self.head_in_shape = out_shapes[-1]
        self.block_builder = block_builder
        self.init = init

    # --- AugLocal: fresh copies of the selected blocks (engine/auxnets/auglocal.py build_block_aux) ----------------
    def copy_aux(self, layer: int, selected: Sequence[int]) -> tuple[list[nn.Module], nn.Module, list[str]]:
        """The body blocks, head and body notation of the aux net of `layer` copying `selected` blocks.

        Block j is a fresh copy of layer j when the aux net's current shape is layer j's own input shape, else the
        `block_builder`'s block for (j, current shape, layer j's output shape), marked '*' in the notation.
        """
        shape = self.out_shapes[layer]
        body, parts = [], []
        for j in selected:
            info = self.info[j]
            if shape == self.in_shapes[j]:
                body.append(reinitialise(copy.deepcopy(self.layers[j]), self.init))
                parts.append(f"{info.width}{info.kind}")
            else:
                body.append(self._built(layer, j, shape))
                parts.append(f"{info.width}{info.kind}*")
            shape = self.out_shapes[j]
        if shape != self.head_in_shape:
            raise ValueError(self._chain_error(layer, "the head", shape, self.head_in_shape,
                                               "the head takes") + " (a stack's aux head is a copy of its head)")
        return body, reinitialise(copy.deepcopy(self.head), self.init), parts

    def _built(self, layer: int, j: int, shape: Shape) -> nn.Module:
        if self.block_builder is None:
            raise ValueError(self._chain_error(layer, f"selected block {j}", shape, self.in_shapes[j],
                                               f"layer {j} takes")
                             + f"; pass block_builder(j, input_shape, output_shape) to from_blocks to build a "
                               f"block from {shape} to {self.out_shapes[j]}")
        block = self.block_builder(j, shape, self.out_shapes[j])
        if not isinstance(block, nn.Module):
            raise ValueError(f"{self.name}: block_builder({j}, {shape}, {self.out_shapes[j]}) returned a "
                             f"{type(block).__name__}, not an nn.Module")
        try:
            got = meta_output(block, shape)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{self.name}: block_builder({j}, {shape}, {self.out_shapes[j]})'s block cannot run "
                             f"on {shape}: {err}") from err
        if got != self.out_shapes[j]:
            raise ValueError(f"{self.name}: block_builder({j}, {shape}, {self.out_shapes[j]})'s block emits {got}, "
                             f"not {self.out_shapes[j]}")
        return block

    def _chain_error(self, layer: int, what: str, shape: Shape, wanted: Shape, wanted_is: str) -> str:
        return (f"{self.name}: the aux net of layer {layer} cannot chain {what}: it would get {shape}, but "
                f"{wanted_is} {wanted}")

    # --- hooks the registered families have and a stack does not ---------------------------------------------
    def aux_block(self, j: int, in_channels: int, stride: int) -> nn.Module:
        raise ValueError(f"{self.name} is a stack of blocks: its aux nets copy its own blocks; the conv1x1 / "
                         "conv3x3 ablations (which rebuild blocks with other channels and strides) need a "
                         "registered CNN; use strategy uniform, sequential or repetitive")

    def aux_head(self, in_channels: int, k: int) -> nn.Module:
        return self.aux_block(0, in_channels, 1)

    def init_aux(self, module: nn.Module) -> None:
        """The baselines' aux nets (DGL, PredSim, InfoPro): kaiming fan_out convs, norm layers 1/0, Linear torch's
        default, as their own code does; `init` is for the user's blocks, not for these."""
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def trace_shapes(blocks: list[nn.Module], head: nn.Module, input_shape: Shape, name: str,
                 num_classes: int) -> tuple[list[Shape], list[Shape]]:
    """Per-sample input and output shapes of every block, and a check that the head ends in (num_classes,)."""
    ins, outs, shape = [], [], input_shape
    for j, block in enumerate(blocks):
        try:
            out = meta_output(block, shape)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{name}: block {j} ({type(block).__name__}) cannot run on its input {shape}: "
                             f"{err}") from err
        if not layout_of(out):
            raise ValueError(f"{name}: block {j} emits {out} per sample; a local layer must emit a (C, H, W) "
                             "feature map, (N, D) tokens or (D,) features")
        ins.append(shape)
        outs.append(out)
        shape = out
    try:
        logits = meta_output(head, shape)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{name}: the head ({type(head).__name__}) cannot run on the last block's output "
                         f"{shape}: {err}") from err
    if logits != (num_classes,):
        raise ValueError(f"{name}: the head emits {logits} per sample, expected ({num_classes},) class scores")
    return ins, outs


def from_blocks(blocks: Sequence[nn.Module], head: nn.Module, *, num_classes: int, input_size: int, name: str,
                block_builder: BlockBuilder | None = None, in_channels: int = 3,
                init: Callable[[nn.Module], None] | None = None) -> BlockStack:
    """A LayeredModel of `blocks` (one local layer each, in order) and `head`, for (in_channels, S, S) inputs.

    `block_builder(j, input_shape, output_shape)` builds an aux block for layer j where a copy of layer j would
    not accept the aux net's input; `init(module)` re-initialises copied blocks and aux heads instead of their
    modules' reset_parameters(). The blocks and head are used as they are (their weights are the primary's).
    """
    return BlockStack(blocks, head, num_classes=num_classes, input_size=input_size, name=name,
                      block_builder=block_builder, in_channels=in_channels, init=init)
