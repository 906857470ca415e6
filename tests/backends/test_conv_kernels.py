"""Which convs get convopt's kernel and what their epilogues absorb (structure), and that it is exact."""

import torch
from torch import nn

import convopt
from convopt.backends.conv_kernels import plan_epilogues
from tests.conftest import rel_err


class Residual(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.conv3 = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        z = torch.relu(self.conv2(y) + x)  # residual add then activation: all in conv2's epilogue
        w = self.conv3(z)
        return nn.functional.relu6(w), w  # w is read twice: its activation cannot be absorbed


def test_epilogue_plan():
    model, x = Residual().eval(), torch.randn(1, 8, 10, 10)
    graph = convopt.optimize(model, x).graph
    plans = plan_epilogues(graph)
    by_scope = {graph.node_map[name].scope: plan for name, plan in plans.items()}
    assert by_scope["conv1"].activation == "relu" and by_scope["conv1"].residual is None
    assert by_scope["conv2"].activation == "relu" and by_scope["conv2"].residual == "x"
    assert len(by_scope["conv2"].absorbed) == 2
    assert by_scope["conv3"].activation == "none" and not by_scope["conv3"].absorbed


def test_fused_kernels_are_exact():
    model, x = Residual().eval(), torch.randn(2, 8, 10, 10)
    fast = convopt.optimize(model, x, target="cpu")
    with torch.no_grad():
        for got, want in zip(fast(x), model(x)):
            assert rel_err(got, want) <= 1e-5


class Activations(nn.Module):
    """Every activation a conv or dense epilogue absorbs, and one it does not (tanh)."""

    def __init__(self, c=16):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(9))
        self.leaky = nn.Conv2d(c, c, 1)
        self.fc1, self.fc2 = nn.Linear(c, 32), nn.Linear(32, 10)

    def forward(self, x):
        acts = [nn.functional.silu, torch.sigmoid, nn.functional.gelu, lambda v: nn.functional.gelu(v, approximate="tanh"),
                nn.functional.hardswish, nn.functional.hardsigmoid, nn.functional.relu6,
                lambda v: nn.functional.leaky_relu(v, 0.2), nn.functional.leaky_relu]
        for conv, act in zip(self.convs, acts):
            x = act(conv(x))
        x = torch.tanh(self.leaky(x))
        return self.fc2(nn.functional.gelu(self.fc1(x.mean((2, 3)))))


def test_activations_are_absorbed_and_exact():
    model, x = Activations().eval(), 3 * torch.randn(2, 16, 9, 11)
    # each conv its own kernel (a host's cost model may fuse consecutive convs into one block kernel)
    fast = convopt.optimize(model, x, target="cpu", fuse_blocks=False)  # checked against eager (rel. error <= 1e-4)
    plans = plan_epilogues(fast.graph)
    by_scope = {fast.graph.node_map[name].scope: plan.activation for name, plan in plans.items()}
    assert [by_scope[f"convs.{i}"] for i in range(9)] == [
        "silu", "sigmoid", "gelu", "gelu_tanh", "hardswish", "hardsigmoid", "relu6", "leaky_relu:0.2",
        "leaky_relu:0.01"]
    assert by_scope["leaky"] == "none" and by_scope["fc1"] == "gelu" and by_scope["fc2"] == "none"
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) < 1e-5
