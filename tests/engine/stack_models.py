"""Stacks of blocks the stack, spec and parity tests build: a custom CNN with a downsampling block, and tokens."""

from __future__ import annotations

import torch
from auglocal.engine.models.stack import from_blocks
from torch import nn


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ResBlock(nn.Module):
    """Residual-ish block of one width: x + conv-BN(ReLU(conv-BN(x)))."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(ConvBNReLU(width, width), nn.Conv2d(width, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def cnn_blocks(num_classes: int = 10) -> tuple[list[nn.Module], nn.Module]:
    """stem 3->8, 2 ResBlocks(8), stride-2 ConvBNReLU 8->16, 2 ResBlocks(16): L = 6."""
    blocks = [ConvBNReLU(3, 8), ResBlock(8), ResBlock(8), ConvBNReLU(8, 16, 2), ResBlock(16), ResBlock(16)]
    return blocks, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def downsampler(j: int, input_shape: tuple, output_shape: tuple) -> nn.Module:
    """A block from input_shape to output_shape: a strided ConvBNReLU (the builder of the custom CNN)."""
    return ConvBNReLU(input_shape[0], output_shape[0], input_shape[1] // output_shape[1])


def custom_cnn(num_classes: int = 10, input_size: int = 32):
    """The custom CNN as a LayeredModel with its builder: a model function for specs and the parity test."""
    blocks, head = cnn_blocks(num_classes)
    return from_blocks(blocks, head, num_classes=num_classes, input_size=input_size, name="custom_cnn",
                       block_builder=downsampler)


class Tokenize(nn.Module):
    """(B, 3, S, S) -> (B, (S/8)^2, dim) by an 8x8 patch conv."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class MixerBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class MeanTokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def token_blocks(num_classes: int = 10, dim: int = 12):
    """(blocks, head) of a token model: patchify + block, 3 more blocks, mean-pool head."""
    blocks = [nn.Sequential(Tokenize(dim), MixerBlock(dim))] + [MixerBlock(dim) for _ in range(3)]
    return blocks, nn.Sequential(nn.LayerNorm(dim), MeanTokens(), nn.Linear(dim, num_classes))
