import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convopt.ir import Op, ParseError, parse, verify
from convopt.ir import ops as O
from convopt.ir.literals import format_value, parse_value
from tests.graphs import Builder


def small_graph():
    b = Builder("small")
    x = b.input("x", (1, 4, 8, 8))
    w = b.const("conv.weight", torch.randn(6, 4, 3, 3))
    c = b.node(Op.CONV2D, [x, w, None], O.Conv2dAttrs((1, 1), (1, 1), (1, 1), 1), scope="conv")
    r = b.node(Op.CLAMP, [c], O.ClampAttrs(0.0, 6.0), scope="act")
    s = b.node(Op.SPLIT, [r], O.SplitAttrs((2, 4), 1))
    g0 = b.node(Op.GETITEM, [s], O.IndexAttrs(0))
    g1 = b.node(Op.GETITEM, [s], O.IndexAttrs(1))
    t = b.node(Op.TORCH, [g0], O.TorchAttrs("aten.leaky_relu.default", (O.Ref(0), 0.01)))
    cat = b.node(Op.CAT, [t, g1], O.DimAttrs(1))
    m = b.node(Op.MUL, [cat], O.BinaryAttrs(0.5))
    return b.graph(m, c)


def test_round_trip_exact_and_equal():
    g = small_graph()
    text = str(g)
    parsed = parse(text)
    assert str(parsed) == text
    assert parsed == g  # constants compare by name, type and checksum
    assert all(c.data is None for c in parsed.constants)
    verify(parsed)


def test_dump_shows_checksums_not_values():
    g = small_graph()
    line = next(ln for ln in str(g).splitlines() if "conv.weight:" in ln)
    assert line.strip().startswith("param %conv.weight: f32[6,4,3,3] #")
    assert len(line.split("#")[1]) == 8


def test_parse_binds_constants_and_checks_checksums():
    g = small_graph()
    w = g.constant_map["conv.weight"].data
    parsed = parse(str(g), constants={"conv.weight": w})
    assert torch.equal(parsed.constant_map["conv.weight"].data, w)
    with pytest.raises(ParseError, match="checksum"):
        parse(str(g), constants={"conv.weight": w + 1})


def test_opaque_node_and_tuple_types_print_readably():
    text = str(small_graph())
    assert "torch(%getitem_3) {target='aten.leaky_relu.default', args=(Ref(0), 0.01)}" in text
    assert ": (f32[1,2,8,8], f32[1,4,8,8])" in text
    assert "conv2d(%x, %conv.weight, none)" in text


@pytest.mark.parametrize("bad, message", [
    ("graph g(%x: f32[1]) {\n  %y = frobnicate(%x) : f32[1]\n  return %y\n}\n", "unknown op"),
    ("graph g(%x: f32[1]) {\n  %y = relu(%x) : f32[1]\n}\n", "missing 'return'"),
    ("graph g(%x: f32[1]) {\n  %y = relu(%x) : q32[1]\n  return %y\n}\n", "dtype"),
    ("graph g(%x: f32[1]) {\n  %y = clamp(%x) {min=__import__('os')} : f32[1]\n  return %y\n}\n", "not an IR attribute"),
    ("nonsense", "starts with"),
])
def test_parse_errors_name_the_line(bad, message):
    with pytest.raises(ParseError, match=message):
        parse(bad)


@pytest.mark.parametrize("value", [None, True, 0, -3, 1e-05, 0.1, math.inf, -math.inf, "tanh", (1, 2), (3,), (),
                                   ((1, 2), (3,)), torch.float16, torch.contiguous_format, torch.strided,
                                   torch.device("cpu"), O.Ref(2), (O.Ref(0), None, 1.5)])
def test_literal_round_trip(value):
    assert parse_value(format_value(value)) == value
    assert format_value(parse_value(format_value(value))) == format_value(value)


def test_nan_literal():
    assert math.isnan(parse_value(format_value(math.nan)))


# ---- property: random graphs round-trip exactly and verify

_UNARY = [Op.RELU, Op.SIGMOID, Op.SILU, Op.TANH, Op.HARDSWISH, Op.HARDSIGMOID, Op.IDENTITY]


@st.composite
def random_graphs(draw):
    b = Builder(draw(st.sampled_from(["main", "Net", "m2"])))
    channels = draw(st.integers(1, 4)) * 2
    hw = draw(st.integers(3, 7))
    values = [b.input("x", (1, channels, hw, hw))]
    if draw(st.booleans()):
        values.append(b.input("y", (1, channels, hw, hw)))
    for k in range(draw(st.integers(1, 8))):
        src = draw(st.sampled_from(values))
        kind = draw(st.sampled_from(["unary", "scalar", "binary", "conv", "clamp", "gelu", "opaque", "split", "pool"]))
        if kind == "unary":
            v = b.node(draw(st.sampled_from(_UNARY)), [src], O.NoAttrs())
        elif kind == "scalar":
            scalar = draw(st.one_of(st.integers(-3, 3), st.floats(-10, 10, allow_nan=False, width=32)))
            v = b.node(draw(st.sampled_from([Op.ADD, Op.MUL, Op.SUB])), [src], O.BinaryAttrs(scalar))
        elif kind == "binary":
            v = b.node(draw(st.sampled_from([Op.ADD, Op.MUL])), [src, draw(st.sampled_from(values))], O.BinaryAttrs())
        elif kind == "conv":
            groups = draw(st.sampled_from([1, 2, channels]))
            kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            w = b.const(f"layer{k}.weight", torch.randn(channels, channels // groups, kh, kw))
            bias = b.const(f"layer{k}.bias", torch.randn(channels)) if draw(st.booleans()) else None
            attrs = O.Conv2dAttrs((1, 1), (kh // 2, kw // 2), (1, 1), groups)
            v = b.node(Op.CONV2D, [src, w, bias], attrs, scope=f"layer{k}")
            if b.types[v].shape != b.types[src].shape:
                continue  # even kernels change the size; keep values of one shape
        elif kind == "clamp":
            lo = draw(st.one_of(st.none(), st.floats(-5, 0, allow_nan=False)))
            hi = draw(st.floats(1, 5)) if lo is None else draw(st.one_of(st.none(), st.floats(1, 5)))
            v = b.node(Op.CLAMP, [src], O.ClampAttrs(lo, hi))
        elif kind == "gelu":
            v = b.node(Op.GELU, [src], O.GeluAttrs(draw(st.sampled_from(["none", "tanh"]))))
        elif kind == "opaque":
            v = b.node(Op.TORCH, [src], O.TorchAttrs("aten.leaky_relu.default",
                                                      (O.Ref(0), draw(st.floats(0, 1, allow_nan=False)))))
        elif kind == "split":
            half = channels // 2
            s = b.node(Op.SPLIT, [src], O.SplitAttrs((half, half), 1))
            parts = [b.node(Op.GETITEM, [s], O.IndexAttrs(i)) for i in (1, 0)]
            v = b.node(Op.CAT, parts, O.DimAttrs(1))
        else:
            v = b.node(Op.MAX_POOL2D, [src], O.MaxPool2dAttrs((3, 3), (1, 1), (1, 1), (1, 1), False))
        values.append(v)
    outputs = draw(st.lists(st.sampled_from(values), min_size=1, max_size=2, unique=True))
    return b.graph(*outputs)


@settings(max_examples=60, deadline=None)
@given(random_graphs())
def test_random_graphs_round_trip(g):
    verify(g)
    text = str(g)
    parsed = parse(text)
    assert str(parsed) == text
    assert parsed == g
    verify(parsed)
