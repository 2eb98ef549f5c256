"""Per-layer outputs of a frozen LayeredModel on fixed examples of a data source."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from auglocal.engine.data.source import DataSource, evenly_spaced
from auglocal.engine.models.base import LayeredModel

#: the probes' training images are one fixed draw of training batches, the same for every run compared
PROBE_DRAW_SEED = 0


def test_examples(data: DataSource, max_examples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `max_examples` test images (normalised, never augmented) spread evenly over the test order.

    Spreading keeps the classes mixed where the test order is sorted by class; the choice depends only on
    the data set, so two runs are always compared on the same images.
    """
    count = None if max_examples is None else min(max_examples, data.test_size)
    indices = evenly_spaced(data.test_size, count, "max_examples").tolist()
    pairs = [data.test_batch(i, 1) for i in indices]
    return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])


def train_examples(data: DataSource, max_examples: int | None = None,
                   batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `max_examples` training images as the trainer sees them (shuffled, augmented), one fixed draw.

    Going through `train_batch` works for every DataSource (in-memory or image folders) and, with the fixed
    PROBE_DRAW_SEED, gives every analysed run the same images.
    """
    count = data.train_size if max_examples is None else min(max_examples, data.train_size)
    images, labels, step = [], [], 0
    while sum(len(y) for y in labels) < count:
        x, y = data.train_batch(PROBE_DRAW_SEED, 0, step, batch_size)
        images.append(x)
        labels.append(y)
        step += 1
    return torch.cat(images)[:count], torch.cat(labels)[:count]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def layer_outputs(model: LayeredModel, images: torch.Tensor, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """Yield the output of layer 0, 1, ..., L-1 for all `images`, one layer at a time (on the CPU).

    The sweep goes layer by layer over all examples rather than example batch by batch over all layers, so
    memory holds one layer's activations of the chosen examples, never all L of them: that is what lets
    CKA compare whole flattened conv maps of ResNet-110. The model is put in eval mode (BN running
    statistics, as at test time) and nothing is differentiated.
    """
    model.eval()
    device = _device(model)
    current = images
    for layer in model.layers:
        with torch.no_grad():  # not held across the yield: grad mode is global state of the caller's thread
            chunks = [layer(current[i:i + batch_size].to(device)).cpu()
                      for i in range(0, current.shape[0], batch_size)]
        current = torch.cat(chunks)
        yield current


def global_pool(features: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) conv maps -> (n, C) channel means; vectors pass through, anything else is flattened."""
    if features.dim() == 4:
        return features.mean(dim=(2, 3))
    return features.reshape(features.shape[0], -1)


def head_logits(model: LayeredModel, last: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The primary classifier's logits from the last layer's output (eval mode, no gradients)."""
    model.eval()
    device = _device(model)
    with torch.no_grad():
        return torch.cat([model.head(last[i:i + batch_size].to(device)).cpu()
                          for i in range(0, last.shape[0], batch_size)])
