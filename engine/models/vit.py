"""torchvision's VisionTransformer as a stack of blocks: one local layer per encoder block (docs/method.md, "Stacks
of blocks").

Layer 0 is the patch stem (what VisionTransformer.forward does before `encoder.layers`) followed by the first
encoder block, so that every local layer holds an encoder block; layers 1..L-1 are the other blocks; the head is
the encoder's final LayerNorm, the class token, and `heads`. The modules are torchvision's own, so the primary
network starts with torchvision's initial weights and computes exactly VisionTransformer.forward.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from auglocal.engine.models.stack import BlockStack, from_blocks
from torch import nn
from torchvision.models import vision_transformer as tv_vit


@dataclass(frozen=True)
class VitConfig:
    """The size of a VisionTransformer; `image_size` is the model's input size."""

    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int


#: torchvision's configurations (torchvision.models.vit_b_16 & co.) and a CPU-sized one for 32x32 inputs
VIT_CONFIGS = {
    "vit_tiny": VitConfig(patch_size=4, num_layers=8, num_heads=4, hidden_dim=64, mlp_dim=128),
    "vit_b_16": VitConfig(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
    "vit_b_32": VitConfig(patch_size=32, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
    "vit_l_16": VitConfig(patch_size=16, num_layers=24, num_heads=16, hidden_dim=1024, mlp_dim=4096),
}


class PatchStem(nn.Module):
    """Image -> tokens: conv_proj patchify, flatten, prepend the class token, add the position embedding, dropout.

    Holds VisionTransformer's own conv_proj, class_token, encoder.pos_embedding and encoder.dropout."""

    def __init__(self, vit: tv_vit.VisionTransformer):
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout
        self.hidden_dim = vit.hidden_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x)
        x = x.reshape(x.shape[0], self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)

    def reset_parameters(self) -> None:
        """VisionTransformer's init: trunc-normal patchify (std sqrt(1/fan_in)), zero bias and class token,
        position embedding N(0, 0.02)."""
        conv = self.conv_proj
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / fan_in))
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.class_token)
        nn.init.normal_(self.pos_embedding, std=0.02)


class ClassToken(nn.Module):
    """(B, N, D) -> (B, D): the class token, which is all VisionTransformer classifies from."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def vit_init(module: nn.Module) -> None:
    """Fresh weights as VisionTransformer gives them, for the copies in aux nets: MLP Linear xavier-uniform with
    N(0, 1e-6) bias, attention as nn.MultiheadAttention builds it, LayerNorm 1/0, the patch stem as
    `PatchStem.reset_parameters`. One exception: torchvision zeroes the classifier `heads.head`, which an aux head
    copy must not inherit, since a zero classifier passes no gradient back on the first step, so its layer would
    start learning a step late; it gets nn.Linear's own init."""
    for m in module.modules():
        if isinstance(m, PatchStem):
            m.reset_parameters()
        elif isinstance(m, tv_vit.MLPBlock):
            for linear in m.modules():
                if isinstance(linear, nn.Linear):
                    nn.init.xavier_uniform_(linear.weight)
                    nn.init.normal_(linear.bias, std=1e-6)
        elif isinstance(m, nn.MultiheadAttention):
            m.out_proj.reset_parameters()
            m._reset_parameters()
        elif isinstance(m, nn.LayerNorm):
            m.reset_parameters()
        elif isinstance(getattr(m, "head", None), nn.Linear) and isinstance(m, nn.Sequential):
            m.head.reset_parameters()


def encoder_block(layer: nn.Module) -> nn.Module:
    """The encoder block of a local layer (layer 0 is stem + block)."""
    return layer[1] if isinstance(layer, nn.Sequential) and isinstance(layer[0], PatchStem) else layer


def build_vit(name: str, num_classes: int = 1000, input_size: int = 224) -> BlockStack:
    """The registered ViT `name` (VIT_CONFIGS) for square `input_size` inputs, cut into its encoder blocks."""
    config = VIT_CONFIGS[name]
    if input_size % config.patch_size != 0:
        raise ValueError(f"{name}: patch size {config.patch_size} must divide the input size, got {input_size}; "
                         f"use an input size that is a multiple of {config.patch_size}")
    vit = tv_vit.VisionTransformer(image_size=input_size, patch_size=config.patch_size,
                                   num_layers=config.num_layers, num_heads=config.num_heads,
                                   hidden_dim=config.hidden_dim, mlp_dim=config.mlp_dim, num_classes=num_classes)
    encoders = list(vit.encoder.layers)
    blocks = [nn.Sequential(PatchStem(vit), encoders[0]), *encoders[1:]]
    head = nn.Sequential(vit.encoder.ln, ClassToken(), vit.heads)
    stack: BlockStack | None = None

    def builder(j: int, input_shape: tuple, output_shape: tuple) -> nn.Module:
        """Tokens in, the same tokens out: a fresh copy of layer j's encoder block (only layer 0, whose stem
        takes the image, ever needs one: the repetitive ablation)."""
        if input_shape != output_shape or len(input_shape) != 2:
            raise ValueError(f"{name}: no aux block for layer {j} from {input_shape} to {output_shape}")
        fresh = copy.deepcopy(encoder_block(stack.layers[j]))
        vit_init(fresh)
        return fresh

    stack = from_blocks(blocks, head, num_classes=num_classes, input_size=input_size, name=name,
                        block_builder=builder, init=vit_init)
    return stack
