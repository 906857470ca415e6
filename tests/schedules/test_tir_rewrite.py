"""Rebuilding TIR around a changed part (convopt/schedules/tir_rewrite.py): every kind of child reached,
unchanged trees returned as the same objects."""

import tvm
from tvm import te, tirx

from convopt.schedules.tir_rewrite import map_children, with_block_body


def _stores(value: float):
    """A loop over a sequence of two stores and an if with a store on each side, of ``value`` into a buffer."""
    buf = tirx.decl_buffer((4,), "float32", name="buf")
    i = tirx.Var("i", "int32")
    store = lambda: tirx.BufferStore(buf, tirx.const(value, "float32"), [i])  # noqa: E731
    branch = tirx.IfThenElse(i > 1, store(), store())
    return tirx.For(i, 0, 4, tirx.ForKind.SERIAL, tirx.SeqStmt([store(), store(), branch]))


def _doubled(stmt):
    if isinstance(stmt, tirx.BufferStore):
        return tirx.BufferStore(stmt.buffer, tirx.const(2 * stmt.value.value, "float32"), stmt.indices)
    return map_children(stmt, _doubled)


def _values(stmt) -> list[float]:
    found = []
    if isinstance(stmt, tirx.BufferStore):
        return [stmt.value.value]
    if isinstance(stmt, tirx.For):
        return _values(stmt.body)
    if isinstance(stmt, tirx.SeqStmt):
        for part in stmt.seq:
            found += _values(part)
    if isinstance(stmt, tirx.IfThenElse):
        found += _values(stmt.then_case) + _values(stmt.else_case)
    if isinstance(stmt, tvm.s_tir.SBlockRealize):
        found += _values(stmt.block.body)
    return found


def test_every_child_is_rewritten():
    assert _values(_doubled(_stores(1.5))) == [3.0] * 4


def test_an_unchanged_tree_is_the_same_object():
    tree = _stores(0.0)
    assert map_children(tree, lambda s: s).same_as(tree)
    store = tree.body.seq[0]
    assert map_children(store, _doubled).same_as(store)  # a store has no children


def test_a_block_body_is_replaced_and_its_block_kept():
    x = te.placeholder((4,), name="x")
    func = te.create_prim_func([x, te.compute((4,), lambda i: x[i] * 2.0, name="y")])
    root = func.body  # the root block's realize
    assert with_block_body(root, root.block.body).same_as(root)
    empty = tirx.Evaluate(0)
    rebuilt = with_block_body(root, empty)
    assert rebuilt.block.body.same_as(empty) and rebuilt.block.name_hint == root.block.name_hint
