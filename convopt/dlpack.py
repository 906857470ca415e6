"""Torch tensors to TVM tensors and back through DLPack, without copies where TVM allows."""

from __future__ import annotations

import torch
import tvm


def to_tvm(t: torch.Tensor):
    """A torch tensor as a TVM tensor without a copy, unless TVM can't take it: TVM needs contiguous data
    aligned to 64 bytes (tensors over numpy arrays or slices may not be), so those are copied once."""
    t = t.detach().contiguous()
    if t.data_ptr() % 64:
        aligned = torch.empty_like(t)
        aligned.copy_(t)
        t = aligned
    return tvm.runtime.from_dlpack(t)
