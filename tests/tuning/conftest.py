import pytest
import torch
from torch import nn

import convopt
from convopt.target import resolve_target


class TinyNet(nn.Module):
    """Two equal 3x3 convs (one task), a different conv, and a classifier (the dense kernel)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(8, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.a(x))
        x = torch.relu(self.b(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval(), torch.randn(1, 8, 12, 12)


@pytest.fixture(params=[8, 16], ids=["avx2", "avx512"])
def lanes_target(request):
    return resolve_target("cpu").with_lanes(request.param)


def tiny_graph(model, x, target):
    return convopt.optimize(model, x, target=target, lowering="direct", tuning_logs=False, check=False).graph
