"""fold_channel_scale: a squeeze-excite gate's multiply moves into the next conv's weight, where it must not,
and the TVM backend's packed-weight scaling (direct, im2win, Winograd; padded channel blocks; 8 and 16 lanes)
computes what eager PyTorch does."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import convopt
from convopt.backends.torch_backend import to_torch
from convopt.ir import Op, verify
from convopt.numerics import relative_error
from convopt.passes.fold_channel_scale import fold_channel_scale
from convopt.schedules.conv_spec import scaled_weight
from convopt.target import resolve_target

PASS = "fold_channel_scale"


class GatedNet(nn.Module):
    """stem -> SiLU -> squeeze-excite (channel gate, or a spatial one) -> ``project``."""

    def __init__(self, channels=32, out=8, kernel=1, groups=1, spatial_gate=False, second_reader=False,
                 constant_gate=False):
        super().__init__()
        self.constant_gate = nn.Parameter(torch.rand(1, channels, 1, 1) + 0.5) if constant_gate else None
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.reduce = nn.Conv2d(1 if spatial_gate else channels, 4, 1)
        self.expand = nn.Conv2d(4, 1 if spatial_gate else channels, 1)
        self.project = nn.Conv2d(channels, out, kernel, padding=kernel // 2, groups=groups)
        self.second_reader = second_reader
        self.spatial_gate = spatial_gate

    def forward(self, x):
        x = F.silu(self.stem(x))
        s = x.mean(1, keepdim=True) if self.spatial_gate else x.mean((2, 3), keepdim=True)
        gate = self.constant_gate
        if gate is None:
            gate = torch.sigmoid(self.expand(F.silu(self.reduce(s))))
        y = x * gate
        out = self.project(y)
        return (out, y) if self.second_reader else out


def _model(**kwargs):
    torch.manual_seed(0)
    return GatedNet(**kwargs).eval()


def _before(model, x, skip=(), **options):
    """The graph as the CPU pipeline leaves it for this pass (lowerings chosen, layouts decided)."""
    return convopt.optimize(model, x, skip_passes=[PASS, *skip], check=False, tuning_logs=False, **options).graph


def _scaled_convs(graph):
    return [n for n in graph.nodes if n.op is Op.CONV2D and scaled_weight(graph, n.inputs[1]) is not None]


def test_the_gate_moves_into_the_projections_weight():
    model, x = _model(), torch.randn(1, 3, 24, 24)
    before = _before(model, x, lowering={"project": "direct"})
    text = str(before)
    after = fold_channel_scale(before)
    verify(after)
    assert str(before) == text  # the input graph is not mutated
    (conv,) = _scaled_convs(after)
    weight, gate = scaled_weight(after, conv.inputs[1])
    mul_before = before.node_map[before.node_map[conv.name].inputs[0]]
    assert mul_before.op is Op.MUL and mul_before.name not in after.node_map  # the activation's multiply is gone
    assert conv.inputs[0] in mul_before.inputs and gate in mul_before.inputs and weight in after.constant_map
    assert conv.origin.pass_name == PASS and after.node_map[conv.inputs[1]].origin.pass_name == PASS
    assert sum(n.op is Op.MUL for n in after.nodes) == sum(n.op is Op.MUL for n in before.nodes)
    with torch.no_grad():
        assert relative_error(to_torch(after)(x)[0], model(x)) <= 1e-5


@pytest.mark.parametrize("why, kwargs, shape, lowering", [
    ("a batch of 2: a gate per sample", {}, (2, 3, 24, 24), "direct"),
    ("weights larger than an eighth of x", {"out": 96}, (1, 3, 24, 24), "direct"),
    ("a depthwise projection", {"out": 32, "groups": 32, "kernel": 3}, (1, 3, 24, 24), "depthwise"),
    ("a spatial gate [1, 1, H, W]", {"spatial_gate": True}, (1, 3, 24, 24), "direct"),
    ("the gated value read again (an output)", {"second_reader": True}, (1, 3, 24, 24), "direct"),
    ("a lowering with no input-channel axis", {}, (1, 3, 24, 24), "im2col"),
    ("a constant scale (merge_branches folds it when it runs)", {"constant_gate": True}, (1, 3, 24, 24), "direct"),
])
def test_where_it_must_not_fire(why, kwargs, shape, lowering):
    model, x = _model(**kwargs), torch.randn(*shape)
    before = _before(model, x, skip=["merge_branches"], lowering={"project": lowering})
    after = fold_channel_scale(before)
    assert after is before, why


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("lowering, channels, kernel", [
    ("direct", 32, 1), ("im2win", 40, 1), ("winograd2", 40, 3), ("winograd4", 24, 3)])
def test_the_compiled_model_scales_the_packed_weight(lowering, channels, kernel, lanes):
    """40 channels fill 16-lane blocks with padding (Winograd pads its reduction too); the compiled model
    matches eager PyTorch."""
    model, x = _model(channels=channels, out=8, kernel=kernel), torch.randn(1, 3, 24, 24)
    target = resolve_target("cpu").with_lanes(lanes)
    fast = convopt.optimize(model, x, target=target, lowering={"project": lowering}, tuning_logs=False)
    (conv,) = _scaled_convs(fast.graph)
    assert conv.attrs.lowering == lowering
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-5
