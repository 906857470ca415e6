"""A CPU schedule for functions computed row by row over their last axis: softmax (and its fast-math form),
log-softmax, a layer norm over the last axis, with their elementwise epilogues:

    every block iterates the same leading rows [r...] and then, at most, the last axis j: elementwise over
    [r..., j], or a reduction over j into [r...]

Each row is computed whole by one thread, its intermediates (the max, the shifted values, their exp, the
sum) in row-sized buffers that stay in L1: parallel(rows) > one loop over j per block. A j that is a whole
number of vectors is split and vectorized; otherwise an elementwise loop is left plain for LLVM's loop
vectorizer (whole vectors and a scalar tail) and a reduction accumulates ``f`` partial results, f the largest
power of two up to the lanes dividing j (rfactor; 4 for 196), so that its add latency doesn't serialize the row.

dlight's CPU reduction rule split j into vectors with a guard on the last one (196 = 12 x 16 + 4), which
made TVM's vectorizer scalarize every such loop, and kept the row's intermediates in tensors of the whole
input's size: mobilevit_xxs's softmax over [4, 4, 196, 196] took 0.93 ms a call (VectorReduction's
schedule of [4, 4, 192, 192]: 2.4 ms). It is a dlight ScheduleRule, applied before the other reduction rules
(backends/tvm_backend.py default_rules).
"""

from __future__ import annotations

import tvm

from .cpu_fallback import LaneRule

MIN_ROWS = 2  # rows to share among threads; fewer (a softmax over one row of logits) is left to the other rules


def partial_lanes(extent: int, lanes: int) -> int:
    """Partial results of a reduction over ``extent`` (a power of two up to ``lanes`` dividing it)."""
    f = lanes
    while f > 1 and extent % f:
        f //= 2
    return f


class RowReduction(LaneRule):
    """The schedule above (module docstring) for a PrimFunc of row-wise blocks."""

    def apply(self, func, target, tunable):
        normalized = self.normalized(func, target)
        if normalized is None:
            return None
        sch, infos = normalized
        if len(infos) < 2 or not any(info.is_reduction() for info in infos):
            return None
        last = infos[-1]
        if not last.is_injective() or "R" in last.dom_kind():
            return None
        rows = len(last.iters) - 1
        extents = [sch.get(it.loop_rv).extent for it in last.iters]
        if rows < 1 or not all(isinstance(e, tvm.tirx.IntImm) for e in extents):
            return None
        shape = [e.value for e in extents]
        for info in infos:
            kinds = info.dom_kind()
            ext = [sch.get(it.loop_rv).extent for it in info.iters]
            if not all(isinstance(e, tvm.tirx.IntImm) for e in ext):
                return None
            ext = [e.value for e in ext]
            if kinds not in ("S" * rows + "S", "S" * rows + "R", "S" * rows) or ext[:rows] != shape[:rows]:
                return None
            if len(ext) > rows and ext[rows] != shape[rows]:
                return None
        total_rows = 1
        for e in shape[:rows]:
            total_rows *= e
        if total_rows < MIN_ROWS:
            return None
        try:
            return self._schedule(sch, infos, rows, shape[rows])
        except tvm.s_tir.schedule.ScheduleError:  # a pattern the primitives refuse: left to the other rules
            return None

    def _schedule(self, sch, infos, rows: int, width: int):
        f = partial_lanes(width, self.lanes)
        blocks = [info.block_rv for info in infos]
        partials = []
        if f >= 4:  # each reduction over j into f partial results first (rfactor wants its own loop nest)
            for info in infos:
                if info.is_reduction():
                    _, lanes_loop = sch.split(sch.get_loops(info.block_rv)[-1], [None, f])
                    partial = sch.rfactor(lanes_loop, factor_axis=0)
                    partials.append(partial)
                    blocks.insert(blocks.index(info.block_rv), partial)
        outer = sch.fuse(*sch.get_loops(blocks[-1])[:rows])
        sch.parallel(outer)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, outer, preserve_unit_loops=True)
        for block in blocks:
            if any(block.same_as(p) for p in partials):  # the f partial results, one vector, inside the j loop
                inner = {sch.get(loop).extent.value: loop for loop in sch.get_loops(block)[1:]}
                if f != width // f:  # (ambiguous when j = f x f: left serial)
                    sch.reorder(inner[width // f], inner[f])
                    sch.vectorize(inner[f])
                continue
            loops = sch.get_loops(block)
            inner = loops[-1]
            extent = sch.get(inner).extent.value
            if len(loops) > 1 and extent == width and width % self.lanes == 0 and not _reduces(sch, block):
                sch.vectorize(sch.split(inner, [None, self.lanes])[1])
        return sch


def _reduces(sch, block) -> bool:
    return any(iv.iter_type == tvm.tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)
