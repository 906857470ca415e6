import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import convopt
from convopt.ir import Op, verify
from convopt.ir import ops as O
from convopt.passes import canonicalize, eliminate_dead_code
from tests.conftest import rel_err
from tests.graphs import Builder


def ops(g):
    return [n.op for n in g.nodes]


def test_removes_identity_and_neutral_ops_and_records_provenance():
    b = Builder()
    x = b.input("x", (2, 3, 4))
    a = b.node(Op.IDENTITY, [x], O.NoAttrs(), name="copy")
    m = b.node(Op.MUL, [a], O.BinaryAttrs(1), name="times_one")
    p = b.node(Op.PERMUTE, [m], O.PermuteAttrs((0, 1, 2)), name="same_order")
    r1 = b.node(Op.RESHAPE, [p], O.ShapeAttrs((6, 4)), name="r1")
    r2 = b.node(Op.RESHAPE, [r1], O.ShapeAttrs((2, 12)), name="r2")
    out = b.node(Op.RELU, [r2], O.NoAttrs(), name="relu")
    g = b.graph(out)
    result = canonicalize(g)
    verify(result)
    assert ops(result) == [Op.RESHAPE, Op.RELU]  # and no dead nodes left behind
    reshape = result.nodes[0]
    assert reshape.inputs == ("x",) and reshape.attrs.shape == (2, 12)
    assert reshape.origin.pass_name == "canonicalize" and reshape.origin.sources == ("r1", "r2")
    assert "<- canonicalize(%r1, %r2)" in str(result)


def test_does_not_fire_on_ops_that_compute_something():
    b = Builder()
    x = b.input("x", (2, 3))
    a = b.node(Op.ADD, [x], O.BinaryAttrs(1), name="plus_one")
    m = b.node(Op.MUL, [a], O.BinaryAttrs(0), name="times_zero")
    p = b.node(Op.PERMUTE, [m], O.PermuteAttrs((1, 0)), name="transpose")
    d = b.node(Op.DROPOUT, [p], O.DropoutAttrs(0.5), name="dropout")  # training-mode dropout is real
    c = b.node(Op.CAT, [d, d], O.DimAttrs(0), name="cat2")
    g = b.graph(c)
    assert canonicalize(g) == g


def test_integer_promotion_is_kept():
    b = Builder()
    x = b.input("x", (4,), "i64")
    y = b.node(Op.MUL, [x], O.BinaryAttrs(1.0), name="to_float")  # i64 * 1.0 is f32: not a no-op
    g = b.graph(y)
    assert canonicalize(g) == g


def test_numerically_equal_on_a_model():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.drop = nn.Dropout(0.3)

        def forward(self, x):
            y = self.drop(self.conv(x)).flatten(1).reshape(1, 8, -1) * 1
            return y.permute(0, 1, 2).contiguous().clone()

    model, x = M().eval(), torch.randn(1, 3, 9, 9)
    fast = convopt.optimize(model, x)
    assert ops(fast.graph) == [Op.CONV2D, Op.RESHAPE]
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-5  # fp32: the conv runs the chosen lowering


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["identity", "reshape", "permute", "mul1", "add0", "relu"]), min_size=1, max_size=8),
       st.integers(1, 3), st.integers(1, 4))
def test_property_chains_keep_their_value(chain, n, m):
    b = Builder()
    v = b.input("x", (n, m, 2))
    shapes = [(n * m, 2), (n, m * 2), (n, m, 2)]
    for k, step in enumerate(chain):
        if step == "identity":
            v = b.node(Op.IDENTITY, [v], O.NoAttrs())
        elif step == "reshape":
            v = b.node(Op.RESHAPE, [v], O.ShapeAttrs(shapes[k % 3]))
        elif step == "permute":
            rank = b.types[v].rank
            v = b.node(Op.PERMUTE, [v], O.PermuteAttrs(tuple(range(rank))))
        elif step == "mul1":
            v = b.node(Op.MUL, [v], O.BinaryAttrs(1))
        elif step == "add0":
            v = b.node(Op.ADD, [v], O.BinaryAttrs(0.0))
        else:
            v = b.node(Op.RELU, [v], O.NoAttrs())
    g = b.graph(v)
    result = eliminate_dead_code(canonicalize(g))
    verify(result)
    from convopt.backends.torch_backend import to_torch

    x = torch.randn(n, m, 2)
    assert torch.equal(to_torch(result)(x)[0], to_torch(g)(x)[0])
    assert len(result.nodes) <= len(g.nodes)
    assert all(n.op not in (Op.IDENTITY,) for n in result.nodes)


class _LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a layer norm over the channels of NCHW, written with NHWC transposes."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _channel_norm_graph(dims=(0, 2, 3, 1), back=(0, 3, 1, 2), normalized=(8,), shape=(2, 8, 5, 6), extra_use=False):
    b = Builder()
    x = b.input("x", shape)
    to_nhwc = b.node(Op.PERMUTE, [x], O.PermuteAttrs(dims), name="to_nhwc")
    w, bias = (b.const(f"ln.{k}", torch.randn(normalized)) for k in ("w", "b"))
    norm = b.node(Op.LAYER_NORM, [to_nhwc, w, bias], O.LayerNormAttrs(normalized, 1e-6), name="ln")
    out = b.node(Op.PERMUTE, [norm], O.PermuteAttrs(back), name="to_nchw")
    if extra_use:
        out = b.node(Op.ADD, [out, b.node(Op.PERMUTE, [norm], O.PermuteAttrs(back), name="again")], O.BinaryAttrs(),
                     name="both")
    return b.graph(out)


def test_a_layer_norm_between_nhwc_transposes_becomes_one_channel_norm():
    g = _channel_norm_graph()
    result = canonicalize(g)
    verify(result)
    assert ops(result) == [Op.CHANNEL_NORM]
    norm = result.nodes[0]
    assert norm.inputs == ("x", "ln.w", "ln.b") and norm.attrs.eps == 1e-6 and norm.type == g.nodes[-1].type
    assert norm.origin.sources == ("to_nhwc", "ln", "to_nchw")


@pytest.mark.parametrize("case", [
    dict(dims=(0, 3, 2, 1), back=(0, 3, 2, 1)),  # transposes that move H and W too
    dict(normalized=(6, 8)),  # over W and C
    dict(extra_use=True),  # the normalized NHWC value is read twice
], ids=["other-transposes", "two-dims", "read-twice"])
def test_channel_norm_needs_exactly_the_transposes_and_one_reader(case):
    g = _channel_norm_graph(**case)
    assert Op.CHANNEL_NORM not in ops(canonicalize(g))


def test_timms_layer_norm_2d_runs_as_channel_norm_on_torch_and_tvm():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 16, 1)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 9, 11)
    for target in ("torch", "cpu"):
        fast = convopt.optimize(model, x, target=target)  # checked against eager on x
        assert Op.CHANNEL_NORM in ops(fast.graph) and Op.PERMUTE not in ops(fast.graph)


class _ChannelsLastMLP(nn.Module):
    """torchvision's ConvNeXt block: a depthwise conv, then LayerNorm, Linear, GELU, Linear on NHWC, a per-channel
    scale, back to NCHW."""

    def __init__(self, c=16, scale_shape=None, read_twice=False, mix_pixels=False):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.GELU(), \
            nn.Linear(4 * c, c)
        self.scale = nn.Parameter(torch.rand(scale_shape) + 0.5) if scale_shape else None
        self.read_twice, self.mix_pixels = read_twice, mix_pixels

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        hidden = self.act(self.fc1(y))
        if self.mix_pixels:
            hidden = hidden - hidden.mean(dim=(1, 2), keepdim=True)  # ConvNeXt V2's GRN reads every pixel
        y = self.fc2(hidden) * 0.5
        if self.scale is not None:
            y = self.scale * y
        y = y.permute(0, 3, 1, 2)
        return x + y + (hidden.sum() if self.read_twice else 0)


@pytest.mark.parametrize("scale_shape", [None, (16,), (1, 1, 1, 16)])
def test_a_channels_last_mlp_between_transposes_runs_over_nchw(scale_shape):
    model, x = _ChannelsLastMLP(scale_shape=scale_shape).eval(), torch.randn(2, 16, 9, 11)
    g = canonicalize(convopt.capture(model, x))
    verify(g)
    assert Op.PERMUTE not in ops(g) and Op.LINEAR not in ops(g) and Op.LAYER_NORM not in ops(g)
    convs = [n for n in g.nodes if n.op is Op.CONV2D]
    assert [g.types[n.inputs[1]].shape for n in convs] == [(16, 1, 7, 7), (64, 16, 1, 1), (16, 64, 1, 1)]
    assert ops(g).count(Op.CHANNEL_NORM) == 1 and Op.GELU in ops(g)
    assert all(g.types[n.name].shape == (2, 64 if i == 1 else 16, 9, 11) for i, n in enumerate(convs))
    from convopt.backends.torch_backend import to_torch

    with torch.no_grad():
        assert rel_err(to_torch(g)(x)[0], model(x)) < 1e-5
    for target in ("torch", "cpu"):
        fast = convopt.optimize(model, x, target=target)  # checked against eager on x
        assert Op.PERMUTE not in ops(fast.graph) and Op.LINEAR not in ops(fast.graph)
        with torch.no_grad():
            assert rel_err(fast(x), model(x)) < 1e-4


@pytest.mark.parametrize("case", [dict(read_twice=True), dict(mix_pixels=True)], ids=["read-twice", "mixes-pixels"])
def test_a_channels_last_island_stays_when_a_value_is_read_twice_or_pixels_mix(case):
    model, x = _ChannelsLastMLP(**case).eval(), torch.randn(2, 16, 5, 6)
    g = canonicalize(convopt.capture(model, x))
    verify(g)
    assert Op.LINEAR in ops(g) and Op.PERMUTE in ops(g)


def test_a_linear_on_a_transposed_tensor_that_is_not_moved_back_stays():
    """A head: NHWC features into a linear, never transposed back."""
    model = nn.Sequential(nn.Conv2d(3, 8, 1), _Permute((0, 2, 3, 1)), nn.Linear(8, 4)).eval()
    g = canonicalize(convopt.capture(model, torch.randn(1, 3, 4, 4)))
    assert Op.LINEAR in ops(g) and Op.PERMUTE in ops(g)


class _Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class _Addc(nn.Module):
    """addcmul / addcdiv as ConvNeXt V2's GlobalResponseNorm writes them: a per-channel bias and weight."""

    def __init__(self, fn, value):
        super().__init__()
        self.fn, self.value = fn, value
        self.weight, self.bias = nn.Parameter(torch.randn(1, 6, 1, 1)), nn.Parameter(torch.randn(1, 6, 1, 1))

    def forward(self, x):
        return self.fn(self.bias, self.weight, x, value=self.value)


@pytest.mark.parametrize("fn", [torch.addcmul, torch.addcdiv])
@pytest.mark.parametrize("value", [1, 0.5])
def test_addcmul_and_addcdiv_become_the_binary_ops_they_are_made_of(fn, value):
    model, x = _Addc(fn, value).eval(), torch.rand(2, 6, 5, 5) + 0.5
    g = convopt.capture(model, x)
    assert ops(g) == [Op.TORCH]
    result = canonicalize(g)
    verify(result)
    binary = Op.MUL if fn is torch.addcmul else Op.DIV
    assert ops(result) == ([Op.MUL] if value != 1 else []) + [binary, Op.ADD]
    assert all(n.origin.pass_name == "canonicalize" for n in result.nodes)
    from convopt.backends.torch_backend import to_torch

    with torch.no_grad():
        assert rel_err(to_torch(result)(x)[0], model(x)) <= 1e-6  # PyTorch's kernel fuses the multiply-add


def test_addcmul_of_integers_is_kept():
    class IntAddcmul(nn.Module):
        def forward(self, x):
            return torch.addcmul(x, x, x)

    g = convopt.capture(IntAddcmul(), torch.arange(6).reshape(2, 3))
    assert ops(canonicalize(g)) == [Op.TORCH]


class _EvalDropouts(nn.Module):
    """Dropout2d / AlphaDropout / FeatureAlphaDropout in eval mode (capture keeps their ATen op, train=False)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drops = nn.Sequential(nn.Dropout2d(0.3), nn.AlphaDropout(0.2), nn.FeatureAlphaDropout(0.1))

    def forward(self, x):
        return self.drops(self.conv(x)) + 1.0


def test_eval_mode_aten_dropouts_are_removed():
    model, x = _EvalDropouts().eval(), torch.randn(1, 3, 6, 6)
    g = convopt.capture(model, x)
    assert sum(op is Op.TORCH for op in ops(g)) >= 2  # as capture keeps them
    result = canonicalize(g)
    verify(result)
    assert Op.TORCH not in ops(result) and ops(result) == [Op.CONV2D, Op.ADD]
    fast = convopt.optimize(model, x, target="cpu", strict=True)  # no fallback left; checked against eager
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-6


def test_a_dropout_that_drops_is_kept():
    b = Builder()
    x = b.input("x", (1, 4, 6, 6))
    y = b.node(Op.TORCH, [x], O.TorchAttrs("aten.feature_dropout.default", (O.Ref(0), 0.5, True)))
    assert ops(canonicalize(b.graph(y))) == [Op.TORCH]
