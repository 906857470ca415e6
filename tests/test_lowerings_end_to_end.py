"""Every conv lowering inside whole compiled models: forced globally and per layer, checked against eager."""

import importlib

import pytest
import torch
from torch import nn

import convopt
from convopt.ir import Op
from convopt.schedules.lowerings import LOWERINGS, LoweringError
from tests.conftest import rel_err


class Mixed(nn.Module):
    """A 3x3 block with a residual, a 1x1, a strided conv, a 7x7 depthwise and a dilated grouped conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.point = nn.Conv2d(16, 24, 1)
        self.down = nn.Conv2d(24, 24, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(24, 24, 7, padding=3, groups=24)
        self.grouped = nn.Conv2d(24, 32, 3, padding=2, dilation=2, groups=4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        x = nn.functional.relu6(self.point(x))
        x = self.down(x)
        return self.grouped(self.dw(x) + x)


def _model_and_input():
    torch.manual_seed(0)
    return Mixed().eval(), torch.randn(2, 3, 19, 23)


@pytest.mark.parametrize("name", LOWERINGS)
def test_forcing_each_lowering_matches_eager(name):
    model, x = _model_and_input()
    result = convopt.optimize(model, x, target="cpu", lowering=name)  # check=True compares with eager
    chosen = {n.scope: n.attrs.lowering for n in result.graph.nodes if n.op is Op.CONV2D}
    assert name in chosen.values()
    assert rel_err(result(x), model(x)) < 1e-4


def test_cost_model_choice_runs_and_is_recorded(tmp_path):
    model, x = _model_and_input()
    result = convopt.optimize(model, x, target="cpu", dump_ir=tmp_path)
    convs = [n for n in result.graph.nodes if n.op is Op.CONV2D]
    assert convs and all(n.attrs.lowering and n.attrs.predicted_us for n in convs)
    assert "select_lowering" in [r.name for r in result.pass_records]
    dump = next(tmp_path.glob("*_select_lowering.ir")).read_text()
    assert "predicted_us=" in dump


def test_per_layer_override():
    model, x = _model_and_input()
    result = convopt.optimize(model, x, target="cpu", lowering={"point": "fft", "down": "im2col"})
    chosen = {n.scope: n.attrs.lowering for n in result.graph.nodes if n.op is Op.CONV2D}
    assert chosen["point"] == "fft" and chosen["down"] == "im2col"


def test_bad_overrides_are_refused():
    model, x = _model_and_input()
    with pytest.raises(Exception, match="winograd4 can't run it: Winograd needs a 3x3 kernel, got 1x1"):
        convopt.optimize(model, x, target="cpu", lowering={"point": "winograd4"})
    with pytest.raises(Exception, match="no conv node or module of that name"):
        convopt.optimize(model, x, target="cpu", lowering={"pointwise": "direct"})
    with pytest.raises(ValueError, match="target torch runs no convopt conv kernels"):
        convopt.optimize(model, x, target="torch", lowering="im2col")


def test_unknown_lowerings_are_refused_before_capture(monkeypatch):
    model, x = _model_and_input()
    monkeypatch.setattr(importlib.import_module("convopt.optimize"), "capture_program", lambda *a, **k: pytest.fail("captured"))
    with pytest.raises(LoweringError, match="unknown lowering 'x'; convopt has: direct, im2col"):
        convopt.optimize(model, x, target="cpu", lowering="x")
    with pytest.raises(LoweringError, match="unknown lowering 'y'"):
        convopt.optimize(model, x, target="cpu", lowering={"point": "y"})


def test_skipping_select_lowering_uses_the_direct_kernel():
    model, x = _model_and_input()
    result = convopt.optimize(model, x, target="cpu", skip_passes=["select_lowering"])
    assert all(n.attrs.lowering == "" for n in result.graph.nodes if n.op is Op.CONV2D)


class SqueezeExcite(nn.Module):
    """A 3x3 conv scaled by a squeeze-excite gate: its two convs run on one pixel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.reduce, self.expand = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.expand(nn.functional.silu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x * gate


@pytest.mark.parametrize("forced", [None, "gemv", "im2col"])
def test_squeeze_excite_convs_run_as_gemv_unless_another_lowering_is_forced(forced):
    torch.manual_seed(0)
    model, x = SqueezeExcite().eval(), torch.randn(2, 3, 9, 11)
    # (fuse_blocks=False: fused, the squeeze-excite is one kernel of its own, schedules/squeeze_excite.py)
    result = convopt.optimize(model, x, target="cpu", lowering=forced, fuse_blocks=False)  # check=True: eager
    chosen = {n.scope: n.attrs.lowering for n in result.graph.nodes if n.op is Op.CONV2D}
    gate = "im2col" if forced == "im2col" else "gemv"
    assert chosen["reduce"] == chosen["expand"] == gate and chosen["conv"] != "gemv"
    assert rel_err(result(x), model(x)) < 1e-4
