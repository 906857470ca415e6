import networkx as nx
import torch

from convopt.ir import Op, to_dot, to_networkx
from convopt.ir import ops as O
from tests.graphs import Builder


def residual():
    b = Builder("res")
    x = b.input("x", (1, 4, 6, 6))
    w = b.const("conv.weight", torch.randn(4, 4, 3, 3))
    c = b.node(Op.CONV2D, [x, w, None], O.Conv2dAttrs((1, 1), (1, 1), (1, 1), 1), name="conv")
    r = b.node(Op.RELU, [c], O.NoAttrs(), name="relu")
    a = b.node(Op.ADD, [r, x], O.BinaryAttrs(), name="add")
    t = b.node(Op.TORCH, [a], O.TorchAttrs("aten.pixel_shuffle.default", (O.Ref(0), 2)), name="shuffle")
    return b.graph(t)


def test_to_networkx_edges_and_dominators():
    d = to_networkx(residual())
    assert set(d.edges) == {("x", "conv"), ("conv", "relu"), ("relu", "add"), ("x", "add"), ("add", "shuffle")}
    assert d.nodes["shuffle"]["output"] is True
    assert d.nodes["conv"]["node"].op is Op.CONV2D
    assert nx.immediate_dominators(d, "x")["add"] == "x"  # the residual block's entry dominates its join
    assert "conv.weight" in to_networkx(residual(), with_constants=True)


def test_to_dot_is_valid_looking_and_marks_opaque_ops():
    dot = to_dot(residual())
    assert dot.startswith('digraph "res" {') and dot.rstrip().endswith("}")
    assert '"x" -> "add";' in dot
    assert "aten.pixel_shuffle.default" in dot and "fillcolor" in dot
    assert "conv.weight: f32[4,4,3,3]" in dot  # weights are folded into their reader's label
