import dataclasses

import pytest
import torch

from convopt.ir import Graph, Node, Op, TensorType, VerifyError, verify
from convopt.ir import ops as O
from tests.graphs import Builder


def conv_relu():
    b = Builder()
    x = b.input("x", (1, 4, 8, 8))
    w = b.const("w", torch.randn(8, 4, 3, 3))
    c = b.node(Op.CONV2D, [x, w, None], O.Conv2dAttrs((2, 2), (1, 1), (1, 1), 1), name="conv")
    r = b.node(Op.RELU, [c], O.NoAttrs(), name="relu")
    return b.graph(r)


def with_node(g: Graph, which: str, **changes) -> Graph:
    return g.replace(nodes=tuple(dataclasses.replace(n, **changes) if n.name == which else n for n in g.nodes))


def test_valid_graph_passes():
    g = conv_relu()
    assert verify(g) is g


def test_wrong_shape_is_caught_and_named():
    g = with_node(conv_relu(), "conv", type=TensorType((1, 8, 8, 8)))  # stride 2 gives 4x4
    with pytest.raises(VerifyError, match=r"node %conv \(conv2d\).*gives f32\[1,8,4,4\]"):
        verify(g)


def test_wrong_dtype_is_caught():
    g = with_node(conv_relu(), "relu", type=TensorType((1, 8, 4, 4), "f16"))
    with pytest.raises(VerifyError, match="%relu"):
        verify(g)


def test_use_before_definition():
    g = conv_relu()
    g = g.replace(nodes=tuple(reversed(g.nodes)))
    with pytest.raises(VerifyError, match=r"%relu.*uses %conv before it is defined"):
        verify(g)


def test_dangling_output():
    g = conv_relu().replace(outputs=("relu", "nowhere"))
    with pytest.raises(VerifyError, match="output %nowhere is not defined"):
        verify(g)


def test_duplicate_name():
    g = with_node(conv_relu(), "relu", name="conv")
    with pytest.raises(VerifyError, match="name already defined"):
        verify(g)


def test_conv_channels_must_match_groups():
    g = with_node(conv_relu(), "conv", attrs=O.Conv2dAttrs((2, 2), (1, 1), (1, 1), 2))
    with pytest.raises(VerifyError, match=r"%conv.*rejects its inputs"):
        verify(g)


def test_arity_and_optional_inputs():
    with pytest.raises(VerifyError, match="takes 1..1 inputs"):
        verify(with_node(conv_relu(), "relu", inputs=("conv", "x")))
    with pytest.raises(VerifyError, match="may not be none"):
        verify(with_node(conv_relu(), "conv", inputs=("x", None)))


def test_attrs_class_is_checked_at_construction():
    with pytest.raises(TypeError, match="conv2d takes Conv2dAttrs"):
        Node("c", Op.CONV2D, ("x", "w"), O.NoAttrs(), TensorType((1,)))


def test_getitem_needs_a_tuple():
    b = Builder()
    x = b.input("x", (2, 3))
    b.nodes.append(Node("g", Op.GETITEM, (x,), O.IndexAttrs(0), TensorType((2, 3))))
    with pytest.raises(VerifyError, match="getitem 0 of a value of type f32"):
        verify(b.graph("g"))


def test_constant_data_must_match_declared_type():
    g = conv_relu()
    c = dataclasses.replace(g.constants[0], type=TensorType((8, 4, 1, 1)))
    with pytest.raises(VerifyError, match="constant %w"):
        verify(g.replace(constants=(c,)))
