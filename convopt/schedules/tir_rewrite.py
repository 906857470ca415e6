"""Rebuilding a TIR statement tree around a changed part, for convopt's TIR passes (signed_zero_init.py,
row_prefetch.py): TVM 0.27's Python API has no statement mutator, so each pass walks the tree itself and
calls ``map_children`` for the statements it doesn't rewrite. Unchanged subtrees come back as the same
objects (a pass that changes nothing returns its input)."""

from __future__ import annotations

from typing import Callable

from tvm import s_tir, tirx


def with_block_body(realize, body):
    """``realize`` (an SBlockRealize) with its block's body replaced by ``body``."""
    b = realize.block
    if body.same_as(b.body):
        return realize
    block = s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, body, b.init, b.alloc_buffers,
                         b.match_buffers, b.annotations)
    return s_tir.SBlockRealize(list(realize.iter_values), realize.predicate, block)


def map_children(stmt, rewrite: Callable):
    """``stmt`` with ``rewrite`` applied to its child statements: a loop's body, a sequence's parts, both
    branches of an if, a block's body. Other statements (stores, evaluations) have none and come back as
    they are."""
    if isinstance(stmt, tirx.For):
        body = rewrite(stmt.body)
        if body.same_as(stmt.body):
            return stmt
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding, stmt.annotations)
    if isinstance(stmt, tirx.SeqStmt):
        seq = [rewrite(s) for s in stmt.seq]
        return stmt if all(a.same_as(b) for a, b in zip(seq, stmt.seq)) else tirx.SeqStmt(seq)
    if isinstance(stmt, tirx.IfThenElse):
        then = rewrite(stmt.then_case)
        other = None if stmt.else_case is None else rewrite(stmt.else_case)
        if then.same_as(stmt.then_case) and (other is None or other.same_as(stmt.else_case)):
            return stmt
        return tirx.IfThenElse(stmt.condition, then, other)
    if isinstance(stmt, s_tir.SBlockRealize):
        return with_block_body(stmt, rewrite(stmt.block.body))
    return stmt
