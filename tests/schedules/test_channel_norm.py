"""The channel_norm kernel (a layer norm over the channels of each pixel) against PyTorch, in NCHW and in
channel blocks of 8 and 16, and its schedule: parallel over rows, vectorized."""

import pytest
import torch
import tvm

from convopt.ir.layout import to_blocked
from convopt.numerics import relative_error
from convopt.schedules.channel_norm import prim_func

from .conv_cases import host


def _reference(x, gamma, beta, eps):
    return torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), gamma, beta, eps).permute(0, 3, 1, 2)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("shape, blocked", [((2, 40, 7, 9), False), ((1, 3, 5, 5), False), ((2, 32, 5, 7), True),
                                            ((1, 64, 1, 1), True)])
def test_the_kernel_matches_pytorchs_layer_norm_over_channels(lanes, shape, blocked):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 2  # an offset mean: the two-pass variance must not cancel
    gamma, beta = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
    stored = to_blocked(x.numpy(), lanes) if blocked else x.numpy()
    func = prim_func(stored.shape, 1e-6)
    text = func.script()
    assert "T.parallel" in text and "T.vectorized" in text
    run = tvm.compile(tvm.IRModule({"main": func}), target=host(lanes).tvm)["main"]
    out = tvm.runtime.empty(stored.shape, "float32", tvm.cpu())
    run(*(tvm.runtime.tensor(a) for a in (stored, gamma.numpy(), beta.numpy())), out)
    expected = _reference(x, gamma, beta, 1e-6)
    expected = to_blocked(expected.numpy(), lanes) if blocked else expected.numpy()
    assert relative_error(torch.from_numpy(out.numpy()), torch.from_numpy(expected)) <= 1e-5
