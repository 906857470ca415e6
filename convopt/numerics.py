"""How convopt compares tensors: the relative error every check and test uses."""

from __future__ import annotations

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|a - b| / max|b|: the only honest comparison for outputs whose scale varies by 1e8
    (random-init models); the absolute difference when ``expected`` is all zeros."""
    actual, expected = actual.detach().double(), expected.detach().double()
    if not expected.numel():
        return 0.0
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    return diff / scale if scale > 0 else diff
