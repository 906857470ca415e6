"""Edge shapes on the TVM CPU target, under every lowering: each works and matches eager, or is refused at
optimize() with a message (an empty batch: tests/test_optimize.py)."""

import pytest
import torch
from torch import nn

import convopt
from tests.conftest import rel_err

CASES = {
    "1x1 map": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 4, 1)), (1, 3, 1, 1)),
    "kernel larger than the map": (lambda: nn.Sequential(nn.Conv2d(3, 8, 7, padding=3), nn.ReLU()), (1, 3, 2, 3)),
    "strided kernel larger than the map": (lambda: nn.Conv2d(3, 8, 5, stride=2, padding=2), (1, 3, 1, 2)),
    "a single channel": (lambda: nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.Conv2d(1, 1, 1)),
                         (1, 1, 9, 9)),
    "very wide groups": (lambda: nn.Sequential(nn.Conv2d(256, 256, 3, padding=1, groups=128), nn.ReLU(),
                                               nn.Conv2d(256, 512, 3, padding=1, groups=256)), (1, 256, 6, 6)),
    "depthwise on a 1x1 map, batch 2": (lambda: nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU()),
                                        (2, 16, 1, 1)),
}


@pytest.mark.parametrize("lowering", [None, "direct", "im2col", "im2win", "winograd2", "winograd4", "fft"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_edge_shape_matches_eager(case, lowering):
    make, shape = CASES[case]
    model, x = make().eval(), torch.randn(shape)
    fast = convopt.optimize(model, x, target="cpu", lowering=lowering, strict=True)  # checks against eager
    with torch.no_grad():
        x2 = torch.randn(shape)
        assert rel_err(fast(x2), model(x2)) < 1e-5
