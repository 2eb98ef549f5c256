"""Tensors as raw frames and back: the bytes of a tensor in its own memory order, rebuilt without a copy.

Apart from the header codec (messages.py) because this is the per-tensor hot path: one zero-copy view out,
one `torch.frombuffer` in, with the layout (row-major or channels_last) that says how to read the bytes.
The names stay private to the wire (underscored): only messages.py builds and reads frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# Wire name -> torch dtype. bfloat16 needs no numpy detour: frames are raw bytes on both ends.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
#: the numpy dtype of each wire dtype numpy has (not bfloat16): a received frame is viewed through it
_NUMPY = {dtype: np.dtype(name) for name, dtype in DTYPES.items() if name != "bfloat16"}

#: memory layouts a tensor frame may be in: row-major, or NHWC order of a 4-D NCHW tensor (channels_last)
LAYOUTS = ("contiguous", "channels_last")


def _tensor_frame(name: str, tensor: torch.Tensor, keep_device: bool = False) -> tuple[memoryview | torch.Tensor, str]:
    """Raw bytes of a tensor as a zero-copy view in its own memory order, and that order's layout name.

    'contiguous' (row-major) for a row-major tensor; 'channels_last' for a 4-D tensor stored NHWC and not also
    row-major (as when C or H*W is 1); any other tensor is copied row-major first. Row-major is tested first:
    it is what activations almost always are, and each torch call on this per-message path costs.
    Through numpy's buffer where numpy has the dtype (one cheap call), else through a uint8 view (bfloat16).
    With `keep_device`, a GPU tensor's bytes stay on the GPU as a flat uint8 tensor (for transports that move
    device memory themselves: NCCL, CUDA IPC).
    """
    if not tensor.is_cpu and not keep_device:
        raise ValueError(f"tensor {name!r} is on {tensor.device}; move it to the CPU before sending")
    if tensor.requires_grad:
        tensor = tensor.detach()
    layout = LAYOUTS[0]
    if not tensor.is_contiguous():
        if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
            layout = LAYOUTS[1]
            tensor = tensor.permute(0, 2, 3, 1)   # NHWC view of the same storage: row-major, so no copy
        else:
            tensor = tensor.contiguous()
    if not tensor.is_cpu:
        return tensor.reshape(-1).view(torch.uint8), layout
    try:
        return memoryview(tensor.numpy()).cast("B"), layout
    except TypeError:  # a dtype numpy lacks
        return memoryview(tensor.reshape(-1).view(torch.uint8).numpy()), layout


def _tensor_from_frame(buffer: memoryview | torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...],
                       layout: str = "contiguous") -> torch.Tensor:
    """Rebuild a tensor on the received bytes in the sender's layout; copies only a read-only or misaligned buffer.

    ZeroMQ frames are writable and aligned for messages of any size worth avoiding a copy for. A frame may
    also be a flat uint8 tensor (a device buffer an out-of-band transport filled): it is viewed, not copied.
    The caller has checked that the buffer holds exactly prod(shape) elements of `dtype`. A 1-D tensor is
    the flat view itself (a `.view` costs a few microseconds of dispatch per message).
    """
    channels_last = layout == "channels_last"
    if isinstance(buffer, torch.Tensor):
        flat = buffer.view(dtype) if buffer.numel() else torch.empty(0, dtype=dtype, device=buffer.device)
    elif buffer.nbytes == 0:
        return torch.empty(shape, dtype=dtype,
                           memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    else:
        source = bytearray(buffer) if buffer.readonly else buffer
        np_dtype = _NUMPY.get(dtype)
        if np_dtype is not None and not channels_last:
            # numpy's view and reshape, then one from_numpy: about half the cost of frombuffer plus view
            array = np.frombuffer(source, dtype=np_dtype)
            if array.flags.aligned:
                return torch.from_numpy(array if len(shape) == 1 else array.reshape(shape))
        flat = torch.frombuffer(source, dtype=dtype)
        if flat.data_ptr() % dtype.itemsize:
            flat = torch.frombuffer(source, dtype=torch.uint8).clone().view(dtype)
    if channels_last:
        n, c, h, w = shape
        return flat.reshape(n, h, w, c).permute(0, 3, 1, 2)   # NCHW view with NHWC strides
    return flat if len(shape) == 1 else flat.view(shape)


def _dims_ok(shape: list[Any]) -> bool:
    """Every dim a non-negative int (a plain loop: cheaper than all() over a generator for a few dims)."""
    for dim in shape:
        if type(dim) is not int or dim < 0:
            return False
    return True


def _frame_bytes(frame: memoryview | torch.Tensor) -> int:
    return frame.numel() if isinstance(frame, torch.Tensor) else frame.nbytes
