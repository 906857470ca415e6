import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convopt
from convopt import CaptureError, capture
from convopt.ir import Op, parse, verify
from tests.conftest import rel_err


class Convs(nn.Module):
    """Grouped, dilated, strided, non-square and 'same'-padded convolutions."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4)
        self.dilated = nn.Conv2d(16, 16, 3, padding=2, dilation=2, bias=False)
        self.strided = nn.Conv2d(16, 8, (3, 5), stride=(2, 1), padding=(1, 2))
        self.depthwise = nn.Conv2d(8, 8, (1, 7), padding="same", groups=8)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = F.relu(self.grouped(x))
        y = self.dilated(y)
        y = self.strided(y)
        return self.bn(self.depthwise(y))


class Shared(nn.Module):
    """One conv module called twice (shared weights)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(torch.relu(self.conv(x))))


class Unmodelled(nn.Module):
    """pixel_shuffle and a cumulative sum: ops convopt does not model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 1)

    def forward(self, x):
        return torch.cumsum(F.pixel_shuffle(self.conv(x), 2), dim=-1)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)

    def forward(self, x, y):
        z = self.a(x)
        return {"sum": z + y, "parts": (z.flatten(1), torch.sigmoid(y).mean(dim=(2, 3)))}


def _roundtrip_and_run(model, *inputs):
    g = capture(model, inputs)
    verify(g)
    assert str(parse(str(g))) == str(g)
    out = convopt.optimize(model, inputs)
    with torch.no_grad():
        expected = model.eval()(*inputs)
    return g, out, expected


def test_conv_variants_are_modelled():
    model = Convs()
    g, out, expected = _roundtrip_and_run(model, torch.randn(2, 8, 13, 11))
    convs = [n for n in g.nodes if n.op is Op.CONV2D]
    assert [(n.attrs.stride, n.attrs.padding, n.attrs.dilation, n.attrs.groups) for n in convs] == [
        ((1, 1), (1, 1), (1, 1), 4), ((1, 1), (2, 2), (2, 2), 1), ((2, 1), (1, 2), (1, 1), 1),
        ((1, 1), (0, 3), (1, 1), 8)]
    assert convs[1].inputs[2] is None  # no bias
    assert [n.scope for n in convs] == ["grouped", "dilated", "strided", "depthwise"]
    bn = next(n for n in g.nodes if n.op is Op.BATCH_NORM)
    assert bn.inputs[1:] == ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
    x = torch.randn(2, 8, 13, 11)
    with torch.no_grad():
        assert rel_err(out(x), model(x)) <= 1e-5


def test_shared_conv_module_is_captured_twice_with_one_weight():
    model = Shared()
    g, out, expected = _roundtrip_and_run(model, torch.randn(1, 4, 9, 9))
    convs = [n for n in g.nodes if n.op is Op.CONV2D]
    assert len(convs) == 2 and convs[0].inputs[1] == convs[1].inputs[1] == "conv.weight"
    assert rel_err(out(torch.randn(1, 4, 9, 9)), out(torch.randn(1, 4, 9, 9))) > 0
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        assert rel_err(out(x), model.eval()(x)) <= 1e-5


def test_unmodelled_ops_stay_opaque_and_run():
    model = Unmodelled()
    x = torch.randn(1, 3, 6, 6)
    g, out, _ = _roundtrip_and_run(model, x)
    opaque = [n.attrs.target for n in g.nodes if n.op is Op.TORCH]
    assert opaque == ["aten.pixel_shuffle.default", "aten.cumsum.default"]
    with torch.no_grad():
        assert rel_err(out(x), model(x)) <= 1e-6


def test_structured_inputs_and_outputs():
    model = TwoOutputs()
    x, y = torch.randn(1, 3, 5, 5), torch.randn(1, 4, 5, 5)
    g, out, expected = _roundtrip_and_run(model, x, y)
    assert [v.name for v in g.inputs] == ["x", "y"]
    got = out(x, y)
    assert set(got) == {"sum", "parts"} and len(got["parts"]) == 2
    assert rel_err(got["sum"], expected["sum"]) <= 1e-6
    assert rel_err(got["parts"][1], expected["parts"][1]) <= 1e-6


def test_keyword_and_positional_arguments_normalize_alike():
    class KW(nn.Module):
        def forward(self, x):
            return F.gelu(torch.add(x, other=x, alpha=1), approximate="tanh").clamp(max=3.0)

    g = capture(KW(), torch.randn(2, 3))
    assert [n.op for n in g.nodes] == [Op.ADD, Op.GELU, Op.CLAMP]
    assert g.nodes[1].attrs.approximate == "tanh"
    assert (g.nodes[2].attrs.min, g.nodes[2].attrs.max) == (None, 3.0)


def test_in_place_ops_on_views_keep_their_meaning():
    class InPlace(nn.Module):
        def forward(self, x):
            y = x * 2
            y[:, :1].mul_(3)  # an in-place update through a view
            return y.relu_()

    x = torch.randn(1, 4, 3, 3)
    out = convopt.optimize(InPlace(), x)
    assert rel_err(out(x), InPlace()(x)) == 0


def test_capture_error_names_the_module():
    class Bad(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: neither export nor symbolic_trace can follow it
                return x
            return -x

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 3, 1)
            self.gate = Bad()

        def forward(self, x):
            return self.gate(self.stem(x))

    with pytest.raises(CaptureError, match=r"module 'gate' \(Bad\)"):
        capture(Outer(), torch.randn(1, 3, 4, 4))


class Regions(nn.Module):
    """A conv under torch.no_grad() and an attention-like product in a region with autocast off or on."""

    def __init__(self, autocast: bool = False):
        super().__init__()
        self.conv, self.proj = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.autocast = autocast

    def forward(self, x):
        with torch.no_grad():
            y = torch.relu(self.conv(x))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            q = y.flatten(2)
            attn = (q.transpose(1, 2) @ q / 8).float()
        return self.proj(y) + (q @ attn.softmax(-1)).reshape(y.shape)


def test_grad_mode_and_disabled_autocast_regions_are_inlined():
    model, x = Regions().eval(), torch.randn(1, 3, 6, 5)
    graph = capture(model, x)
    # both bodies' ops in place: ATen ops (matmul stays an opaque ATen call), no call of the regions
    assert all(n.attrs.target.startswith("aten.") for n in graph.nodes if n.op is Op.TORCH)
    assert sum(n.op is Op.CONV2D for n in graph.nodes) == 2
    fast = convopt.optimize(model, x, target="cpu", tuning_logs=False)  # checked against eager
    with torch.no_grad():
        x2 = torch.randn_like(x)
        assert rel_err(fast(x2), model(x2)) <= 1e-5


def test_enabled_autocast_and_grad_regions_in_training_are_refused_by_name():
    with pytest.raises(CaptureError, match=r"node \w+: module '' runs under torch.autocast\('cpu', "
                                           r"dtype=torch.bfloat16\); convopt computes in float32"):
        capture(Regions(autocast=True).eval(), torch.randn(1, 3, 6, 5))
    with pytest.raises(CaptureError, match=r"higher-order op wrap_with_set_grad_enabled .* in mode='train'"):
        capture(Regions().train(), torch.randn(1, 3, 6, 5), mode="train")


def test_non_tensor_inputs_are_refused():
    with pytest.raises(CaptureError, match="tensor"):
        capture(nn.ReLU(), (torch.randn(2), 3))


def test_capture_restores_training_mode():
    model = Convs().train()
    capture(model, torch.randn(1, 8, 8, 8))
    assert model.training and model.bn.training


def test_train_mode_refuses_batchnorm_that_updates_statistics():
    with pytest.raises(CaptureError, match="BatchNorm"):
        capture(Convs().train(), torch.randn(2, 8, 8, 8), mode="train")


def test_capture_restores_each_submodules_own_mode():
    model = Convs().train()
    model.bn.eval()  # frozen statistics, as in transfer learning
    capture(model, torch.randn(2, 8, 8, 8))
    assert model.training and model.grouped.training and not model.bn.training


def test_in_place_dropout_and_dtype_casts():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.drop = nn.Dropout(0.2, inplace=True)

        def forward(self, x):
            return self.drop(self.conv(x.half().float()))

    x = torch.randn(1, 3, 4, 4)
    g = capture(M(), x)  # the cast's trace-time metadata assertion (returns None) is dropped
    assert [n.op for n in g.nodes] == [Op.TORCH, Op.TORCH, Op.CONV2D, Op.IDENTITY]
    assert [n.op for n in capture(M(), x, mode="train").nodes][-1] is Op.DROPOUT
    model = M().eval()
    with torch.no_grad():
        assert rel_err(convopt.optimize(model, x, target="torch")(x), model(x)) == 0
        fast = convopt.optimize(model, x, strict=True)  # the casts run on TVM too
        assert rel_err(fast(x), model(x)) < 1e-6
