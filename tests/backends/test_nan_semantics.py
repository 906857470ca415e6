"""NaN and Inf on the TVM CPU target behave as in eager PyTorch (backends/nan_semantics.py and the
lowerings): same NaN and Inf positions through every non-conv op and the direct, im2col, im2win and
Winograd F(2x2) convs; Winograd F(4x4) and FFT mix a whole tile or map, so there every output eager
makes non-finite is non-finite too."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convopt
from convopt.backends.nan_semantics import propagate_nan_func
from tests.conftest import Fn, rel_err

SPECIAL = (float("nan"), float("inf"), float("-inf"), 1e-40, -3e-39)  # and two denormals


def with_specials(shape, seed=0):
    """Random values with NaN, +Inf, -Inf and denormals scattered over every channel."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator)
    flat = x.view(-1)
    positions = torch.randperm(flat.numel(), generator=generator)[: 3 * len(SPECIAL)]
    for i, p in enumerate(positions.tolist()):
        flat[p] = SPECIAL[i % len(SPECIAL)]
    return x


def assert_same_specials(got, want):
    assert torch.equal(got.isnan(), want.isnan()), f"NaN at {int(got.isnan().sum())} positions, eager {int(want.isnan().sum())}"
    assert torch.equal(got == float("inf"), want == float("inf"))
    assert torch.equal(got == float("-inf"), want == float("-inf"))
    finite = torch.isfinite(want)
    assert rel_err(got[finite], want[finite]) < 1e-5


OPS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "clamp": lambda x: x.clamp(-0.5, 0.7),
    "hardtanh": F.hardtanh,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1),
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "tanh": torch.tanh,
    "elu": F.elu,
    "max_pool": lambda x: F.max_pool2d(x, 3, 2, 1),
    "avg_pool": lambda x: F.avg_pool2d(x, 2),
    "global_mean": lambda x: x.mean((2, 3), keepdim=True),
    "add_mul": lambda x: x * 2.0 + x.flip(3),
    "maximum": lambda x: torch.maximum(x, x.flip(2)),
    "softmax": lambda x: torch.softmax(x, dim=1),
}


# eager's GELU gives NaN for +Inf (its vectorized erf), convopt +Inf: the same outputs are non-finite
NON_FINITE_ONLY = {"gelu"}


@pytest.mark.parametrize("name", sorted(OPS))
def test_ops_keep_nan_and_inf_where_eager_does(name):
    model, x = Fn(OPS[name]).eval(), with_specials((1, 4, 7, 9))
    fast = convopt.optimize(model, torch.randn(1, 4, 7, 9), target="cpu", strict=True)
    with torch.no_grad():
        got, want = fast(x), model(x)
    if name in NON_FINITE_ONLY:
        assert torch.equal(torch.isfinite(got), torch.isfinite(want)) and want.isnan().any()
        assert rel_err(got[torch.isfinite(want)], want[torch.isfinite(want)]) < 1e-5
    else:
        assert_same_specials(got, want)


class ConvNet(nn.Module):
    """conv-BN-ReLU, a residual conv with ReLU, max pool, a 1x1 conv: NaN meets every epilogue."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.c3 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = torch.relu(self.c2(y) + y)
        return self.c3(F.max_pool2d(y, 2))


def one_of_each(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    x[0, 0, 3, 4], x[0, 1, 10, 10], x[0, 2, 12, 3] = float("nan"), float("inf"), float("-inf")
    return x


@pytest.mark.parametrize("lowering", ["direct", "im2col", "im2win", "winograd2"])
def test_exact_lowerings_keep_eagers_nan_positions(lowering):
    torch.manual_seed(0)
    model, x = ConvNet().eval(), one_of_each((1, 3, 16, 16))
    fast = convopt.optimize(model, torch.randn(1, 3, 16, 16), target="cpu", lowering=lowering)
    with torch.no_grad():
        want = model(x)
        assert want.isnan().sum() > 100  # NaN spread through three convs and a pool
        assert_same_specials(fast(x), want)


@pytest.mark.parametrize("lowering", ["winograd4", "fft"])
def test_mixing_lowerings_cover_every_non_finite_output(lowering):
    torch.manual_seed(0)
    model, x = ConvNet().eval(), one_of_each((1, 3, 16, 16))
    fast = convopt.optimize(model, torch.randn(1, 3, 16, 16), target="cpu", lowering=lowering)
    with torch.no_grad():
        got, want = fast(x), model(x)
    assert (~torch.isfinite(got))[~torch.isfinite(want)].all()
    clean = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(fast(clean), model(clean)) < 1e-4  # and finite inputs stay exact


def test_the_rewrite_guards_float_max_and_min_only():
    from tvm import tirx

    a, b, i = tirx.Var("a", "float32"), tirx.Var("b", "float32"), tirx.Var("i", "int32")
    out = tirx.decl_buffer((2,), "float32", name="out")
    idx = tirx.decl_buffer((1,), "int32", name="idx")
    body = tirx.SeqStmt([
        tirx.BufferStore(out, tirx.Max(a, tirx.FloatImm("float32", 0.0)), [0]),  # a ReLU: one test
        tirx.BufferStore(out, tirx.Min(a, b), [1]),  # both operands tested
        tirx.BufferStore(idx, tirx.Max(i, tirx.IntImm("int32", 0)), [0]),  # index arithmetic: untouched
    ])
    func = tirx.PrimFunc([a, b, i, out, idx], body)
    lines = propagate_nan_func(func).script().splitlines()
    relu, smaller, index = (next(ln for ln in lines if ln.strip().startswith(start))
                            for start in ("out[0] =", "out[1] =", "idx ="))
    assert "T.max(T.float32(0.0), a)" in relu  # the literal first: a NaN in a propagates
    assert smaller.count("T.Select") == 2 and "isnan" not in smaller and "a + b" in smaller
    assert "T.max(i, 0)" in index  # integer arithmetic untouched
    assert "Select" not in func.script()  # the input function is not changed
