"""Host-to-device copies that do not stall the GPU.

Random indices are drawn on the CPU (one seeded generator, so CPU and GPU runs
draw the same numbers). Copying a tensor from ordinary (pageable) host memory
makes CUDA drain the stream first, which turns every mini-batch into a host
sync; a pinned copy with `non_blocking=True` is queued behind the running
kernels instead. The values are the same either way.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor.to(device)`, queued without a stream sync when the copy goes to a CUDA device."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
