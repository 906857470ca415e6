"""Random small CNNs for the differential fuzzer (tests/test_fuzz.py): a hypothesis strategy of model specs
and the module a spec builds.

A spec is plain data (a tuple of layer tuples), so hypothesis can shrink it and a failing one can be pasted
into ``REGRESSIONS`` as it is printed. Layers, each keeping the map at least 1x1:

    ("conv", out, (kh, kw), stride, dilation, groups, padding, bn, act)
    ("residual", k, act)                      x + BN(conv_kxk(x)), then act
    ("branches", k, identity, act)            BN(conv_kxk) + BN(conv_1x1) [+ BN(x)]: reparameterizes
    ("concat", out_a, out_b)                  cat(conv_1x1(x), conv_3x3(x)) on channels
    ("pool", kind, k, stride, padding, ceil)  max or avg pool
    ("se", reduction)                         x * sigmoid(fc(relu(fc(mean(x)))))
    ("depthwise", k, stride, act)             depthwise kxk conv, BN, act
"""

from __future__ import annotations

import zlib

import torch
from hypothesis import strategies as st
from torch import nn

ACTIVATIONS = {
    "none": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
    "gelu": nn.GELU, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid, "tanh": nn.Tanh,
    "leaky_relu": lambda: nn.LeakyReLU(0.1), "elu": nn.ELU, "mish": nn.Mish,
}


def _out(size: int, k: int, stride: int, padding: int, dilation: int = 1, ceil: bool = False) -> int:
    span = size + 2 * padding - dilation * (k - 1) - 1
    return (-(-span // stride) if ceil else span // stride) + 1


@st.composite
def layer(draw, shape):
    """One layer that fits an input of ``shape`` (C, H, W), and the shape it produces."""
    c, h, w = shape
    kind = draw(st.sampled_from(["conv", "conv", "residual", "branches", "concat", "pool", "se", "depthwise"]))
    act = draw(st.sampled_from(sorted(ACTIVATIONS)))
    if kind == "conv":
        kh, kw = draw(st.sampled_from([(1, 1), (3, 3), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1), (2, 2)]))
        stride, dilation = draw(st.sampled_from([1, 1, 2])), draw(st.sampled_from([1, 1, 2]))
        groups = draw(st.sampled_from([g for g in (1, 1, 2, 3, 4, c) if c % g == 0]))
        out = groups * draw(st.integers(1, max(1, 12 // groups)))
        padding = draw(st.integers(0, dilation * (max(kh, kw) - 1) // 2 + 1))
        oh, ow = _out(h, kh, stride, padding, dilation), _out(w, kw, stride, padding, dilation)
        if oh < 1 or ow < 1:
            padding = dilation * (max(kh, kw) - 1)  # the kernel fits the padded map
            oh, ow = _out(h, kh, stride, padding, dilation), _out(w, kw, stride, padding, dilation)
        return ("conv", out, (kh, kw), stride, dilation, groups, padding, draw(st.booleans()), act), (out, oh, ow)
    if kind == "residual":
        return ("residual", draw(st.sampled_from([1, 3, 5])), act), shape
    if kind == "branches":
        return ("branches", draw(st.sampled_from([3, 5])), draw(st.booleans()), act), shape
    if kind == "concat":
        a, b = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        return ("concat", a, b), (a + b, h, w)
    if kind == "pool":
        pool = draw(st.sampled_from(["max", "avg"]))
        k = draw(st.sampled_from([k for k in (2, 3) if k <= min(h, w)] or [1]))
        stride, padding, ceil = draw(st.sampled_from([1, 2])), draw(st.integers(0, k // 2)), draw(st.booleans())
        oh, ow = _out(h, k, stride, padding, ceil=ceil), _out(w, k, stride, padding, ceil=ceil)
        if ceil and ((oh - 1) * stride >= h + padding or (ow - 1) * stride >= w + padding):
            ceil = False  # PyTorch drops a last window that starts in the padding
            oh, ow = _out(h, k, stride, padding), _out(w, k, stride, padding)
        return ("pool", pool, k, stride, padding, ceil), (c, oh, ow)
    if kind == "se":
        return ("se", draw(st.sampled_from([1, 2, 4]))), shape
    k, stride = draw(st.sampled_from([3, 5, 7])), draw(st.sampled_from([1, 2]))
    return ("depthwise", k, stride, act), (c, _out(h, k, stride, k // 2), _out(w, k, stride, k // 2))


@st.composite
def model_specs(draw, max_layers: int = 4):
    """(input shape (N, C, H, W), layers): batch 1-3, 1-6 channels, odd and even maps of 5-17 pixels."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    h, w = draw(st.integers(5, 17)), draw(st.integers(5, 17))
    layers, shape = [], (c, h, w)
    for _ in range(draw(st.integers(1, max_layers))):
        spec, shape = draw(layer(shape))
        layers.append(spec)
    return (n, c, h, w), tuple(layers)


def _conv_bn(cin, cout, k, stride=1, padding=None, groups=1, dilation=1, bn=True):
    padding = k // 2 if padding is None else padding
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=not bn)
    return nn.Sequential(conv, nn.BatchNorm2d(cout)) if bn else conv


class Residual(nn.Module):
    def __init__(self, c, k, act):
        super().__init__()
        self.body, self.act = _conv_bn(c, c, k), ACTIVATIONS[act]()

    def forward(self, x):
        return self.act(x + self.body(x))


class Branches(nn.Module):
    def __init__(self, c, k, identity, act):
        super().__init__()
        self.big, self.small = _conv_bn(c, c, k), _conv_bn(c, c, 1)
        self.identity = nn.BatchNorm2d(c) if identity else None
        self.act = ACTIVATIONS[act]()

    def forward(self, x):
        out = self.big(x) + self.small(x)
        return self.act(out + self.identity(x) if self.identity is not None else out)


class Concat(nn.Module):
    def __init__(self, c, a, b):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, a, 1), _conv_bn(c, b, 3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class SqueezeExcite(nn.Module):
    def __init__(self, c, reduction):
        super().__init__()
        hidden = max(1, c // reduction)
        self.reduce, self.expand = nn.Conv2d(c, hidden, 1), nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


def build(spec) -> tuple[nn.Module, torch.Tensor]:
    """The eval-mode module of ``spec`` with random weights and BatchNorm statistics, and an input."""
    (n, c, h, w), layers = spec
    seed = zlib.crc32(repr(spec).encode())  # the same weights for the same spec in every process
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _modules(c, layers)
        x = torch.randn(n, c, h, w)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.copy_(torch.rand(m.weight.shape) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape))
                    m.running_mean.copy_(torch.randn(m.running_mean.shape) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape) + 0.5)
    return model.eval(), x


def _modules(c: int, layers) -> nn.Sequential:
    modules = []
    for item in layers:
        kind = item[0]
        if kind == "conv":
            _, out, k, stride, dilation, groups, padding, bn, act = item
            conv = nn.Conv2d(c, out, k, stride, padding, dilation, groups, bias=not bn)
            modules += [conv] + ([nn.BatchNorm2d(out)] if bn else []) + [ACTIVATIONS[act]()]
            c = out
        elif kind == "residual":
            modules.append(Residual(c, item[1], item[2]))
        elif kind == "branches":
            modules.append(Branches(c, *item[1:]))
        elif kind == "concat":
            modules.append(Concat(c, item[1], item[2]))
            c = item[1] + item[2]
        elif kind == "pool":
            _, pool, k, stride, padding, ceil = item
            modules.append(nn.MaxPool2d(k, stride, padding, ceil_mode=ceil) if pool == "max"
                           else nn.AvgPool2d(k, stride, padding, ceil_mode=ceil))
        elif kind == "se":
            modules.append(SqueezeExcite(c, item[1]))
        else:
            _, k, stride, act = item
            modules += [_conv_bn(c, c, k, stride, groups=c), ACTIVATIONS[act]()]
    return nn.Sequential(*modules)
