"""Out-of-band paths for tensor bytes: torch.distributed (gloo, NCCL) and CUDA IPC; the header still goes over the
link, the tensor bytes take the path."""
