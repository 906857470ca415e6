"""Blocked layouts in the IR: TensorType.layout, the helpers of ir/layout.py, the dump and verify."""

import numpy as np
import pytest
import torch

from convopt.ir import Op, VerifyError, parse, verify
from convopt.ir import ops as O
from convopt.ir.layout import aligned_4d, block_of, blocked_layout, padded_channels, stored_shape, to_blocked
from convopt.schedules.kernel import from_layout, to_layout
from convopt.ir.types import TensorType
from tests.graphs import Builder


def test_layout_names_and_stored_shapes():
    assert blocked_layout(16) == "NCHW16c" and block_of("NCHW16c") == 16 and block_of("") is None
    assert stored_shape((2, 32, 5, 7), "NCHW8c") == (2, 4, 5, 7, 8)
    assert stored_shape((2, 32, 5, 7), "") == (2, 32, 5, 7)
    assert aligned_4d((32, 1, 1)) == (1, 32, 1, 1) and aligned_4d((1, 2, 3, 4, 5)) is None
    with pytest.raises(ValueError, match="unknown layout"):
        block_of("NHWC")


def test_to_blocked_puts_element_nchw_at_its_block():
    array = np.arange(2 * 16 * 3 * 5, dtype=np.float32).reshape(2, 16, 3, 5)
    blocked = to_blocked(array, 8)
    assert blocked.shape == (2, 2, 3, 5, 8)
    for n, c, y, x in [(0, 0, 0, 0), (1, 13, 2, 4), (0, 8, 1, 3)]:
        assert blocked[n, c // 8, y, x, c % 8] == array[n, c, y, x]


def test_channels_that_dont_fill_the_last_block_are_stored_padded_with_zeros():
    assert stored_shape((2, 40, 5, 7), "NCHW16c") == (2, 3, 5, 7, 16) and padded_channels(40, 16) == 48
    array = np.arange(1, 1 + 2 * 12 * 3 * 5, dtype=np.float32).reshape(2, 12, 3, 5)
    blocked = to_blocked(array, 8)
    assert blocked.shape == (2, 2, 3, 5, 8)
    for n, c, y, x in [(0, 0, 0, 0), (1, 11, 2, 4), (0, 8, 1, 3)]:
        assert blocked[n, c // 8, y, x, c % 8] == array[n, c, y, x]
    assert not blocked[:, 1, :, :, 4:].any()  # the pad lanes
    torch_blocked = to_layout(torch.from_numpy(array), 8)
    assert np.array_equal(torch_blocked.numpy(), blocked)
    assert torch.equal(from_layout(torch_blocked, 8, 12), torch.from_numpy(array))
    assert TensorType((1, 24, 4, 4), "f32", "NCHW16c").layout == "NCHW16c"


def test_a_layout_the_shape_cannot_have_is_refused():
    TensorType((1, 32, 4, 4), "f32", "NCHW16c")
    with pytest.raises(ValueError, match="4-D"):
        TensorType((32, 4), "f32", "NCHW16c")


def test_layout_is_part_of_the_type_but_not_of_its_logical_shape():
    blocked = TensorType((1, 32, 4, 4), "f32", "NCHW16c")
    plain = TensorType((1, 32, 4, 4))
    assert blocked != plain and blocked.logical == plain and plain.logical is plain
    assert str(blocked) == "f32[1,32,4,4]{NCHW16c}"


def _blocked_graph():
    b = Builder()
    x = b.input("x", (1, 16, 8, 8))
    w = b.const("w", torch.randn(16, 16, 3, 3))
    c = b.node(Op.CONV2D, [x, w, None], O.Conv2dAttrs((1, 1), (1, 1), (1, 1), 1), name="c")
    r = b.node(Op.RELU, [c], O.NoAttrs(), name="r")
    g = b.graph(r)
    node = g.node_map["c"]
    from dataclasses import replace

    return g.replace(nodes=(replace(node, type=replace(node.type, layout="NCHW16c")), g.node_map["r"]))


def test_dump_shows_layouts_and_parses_back():
    g = _blocked_graph()
    text = str(g)
    assert "f32[1,16,8,8]{NCHW16c}" in text
    parsed = parse(text)
    assert str(parsed) == text and parsed == g
    assert parsed.node_map["c"].type.layout == "NCHW16c"


def test_verify_compares_logical_shapes():
    verify(_blocked_graph())  # the layout is storage: the conv's computed type has none
    g = _blocked_graph()
    from dataclasses import replace

    wrong = replace(g.node_map["c"], type=TensorType((1, 16, 8, 9), "f32", "NCHW16c"))
    with pytest.raises(VerifyError, match="type is"):
        verify(g.replace(nodes=(wrong, g.node_map["r"])))
