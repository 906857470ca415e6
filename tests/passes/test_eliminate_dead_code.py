import torch

from convopt.ir import Op, verify
from convopt.ir import ops as O
from convopt.passes import eliminate_dead_code
from tests.graphs import Builder


def test_removes_unread_chains_and_constants_keeps_inputs():
    b = Builder()
    x = b.input("x", (1, 4))
    unused_input = b.input("unused", (3,))
    w = b.const("fc.weight", torch.randn(5, 4))
    dead_w = b.const("dead.weight", torch.randn(5, 4))
    live = b.node(Op.LINEAR, [x, w, None], O.NoAttrs(), name="live")
    d1 = b.node(Op.LINEAR, [x, dead_w, None], O.NoAttrs(), name="dead1")
    b.node(Op.RELU, [d1], O.NoAttrs(), name="dead2")
    g = b.graph(live)
    result = eliminate_dead_code(g)
    verify(result)
    assert [n.name for n in result.nodes] == ["live"]
    assert [c.name for c in result.constants] == ["fc.weight"]
    assert [v.name for v in result.inputs] == ["x", unused_input]


def test_no_change_returns_the_same_graph():
    b = Builder()
    x = b.input("x", (2,))
    g = b.graph(b.node(Op.RELU, [x], O.NoAttrs()))
    assert eliminate_dead_code(g) is g


def test_outputs_and_their_producers_stay():
    b = Builder()
    x = b.input("x", (2,))
    a = b.node(Op.RELU, [x], O.NoAttrs(), name="a")
    s = b.node(Op.SIGMOID, [a], O.NoAttrs(), name="s")
    g = b.graph(s, a)
    assert eliminate_dead_code(g) is g
