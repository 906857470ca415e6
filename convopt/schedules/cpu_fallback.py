"""A default CPU schedule for the ops convopt has no kernel of its own for (elementwise ops, pooling,
norms, softmax, transposes): parallelize each block over its leading data-parallel loops.

TVM's generic legalization leaves every loop nest serial, so on a 2-core machine an unscheduled
GELU or layer norm runs on one core. This rule inlines chains of elementwise blocks (so a fused
SiLU reads and writes memory once), fuses each remaining block's leading spatial loops into one and
parallelizes it. A purely elementwise block is vectorized over its innermost loops: the shortest run of
trailing loops spanning at least four vectors and a whole number of them (``lanes``: the target's SIMD
width), so that an operand broadcast over those axes (squeeze-excite's per-channel scale) is one load
per vector rather than a gather; failing that, over an inner chunk of two vectors or one of all its
loops fused. With relax's FastMathTransform, exp / erf / tanh are polynomials, so this vectorizes them
too. A reduction whose innermost data-parallel loop is a whole number of vectors (pooling and spatial
means of channel-blocked tensors, NCHW[lanes]c: that loop is the channel block) runs that loop
vectorized inside the reduction loops, its epilogue (a mean's division) in the same parallel loop. A loop nest
of fewer than ``MIN_PARALLEL_ITERATIONS`` iterations stays on one core: the thread pool's wake-up costs more than
the second core saves. It is a dlight ScheduleRule, applied after dlight's CPU GEMV and
reduction rules had their turn; ``VectorReduction`` vectorizes the functions whose reductions all
allow it (those, and reductions over the innermost axes of NCHW tensors, rfactored into vectors), applied
before dlight's reduction rule.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func


def subexpressions(expr):
    """``expr`` and every expression under it."""
    stack = [expr]
    while stack:
        e = stack.pop()
        yield e
        for field in ("a", "b", "value", "args", "condition", "true_value", "false_value", "indices"):
            child = getattr(e, field, None)
            if isinstance(child, tvm.ir.Expr):
                stack.append(child)
            elif child is not None and not isinstance(child, (str, int, float)) and hasattr(child, "__iter__"):
                stack.extend(c for c in child if isinstance(c, tvm.ir.Expr))



def substitute(expr, mapping: dict):
    """``expr`` with each variable in ``mapping`` replaced by its value (simplified)."""
    keys = list(mapping)
    return tirx.IndexMap(keys, [expr], None).map_indices([mapping[k] for k in keys])[0]

def _stored_value(sch, block_rv):
    body = sch.get(block_rv).body
    return body.value if isinstance(body, tvm.tirx.stmt.BufferStore) else None


def _is_selection(sch, block_rv) -> bool:
    """The block chooses between values it loads (if_then_else or select over buffer reads: a concatenation,
    a pad)."""
    value = _stored_value(sch, block_rv)
    return value is not None and any(
        (isinstance(e, tvm.ir.expr.Call) and getattr(e.op, "name", "").endswith("if_then_else")
         or isinstance(e, tvm.tirx.expr.Select))
        and any(isinstance(sub, tvm.ir.expr.TensorLoad) for sub in subexpressions(e))
        for e in subexpressions(value))


def _reads(sch, consumer_rv, producer_rv) -> int:
    """How many loads of the producer's output the consumer's stored value makes (None: not a plain store)."""
    value, buffer = _stored_value(sch, consumer_rv), sch.get(producer_rv).writes[0].source
    if value is None:
        return None
    return sum(isinstance(e, tvm.ir.expr.TensorLoad) and e.source.same_as(buffer) for e in subexpressions(value))


def _inline_spatial(sch, infos):
    """dlight's ``try_inline_contiguous_spatial`` (chains of spatial blocks inlined into one, so that they pass
    over memory once), except that a block choosing between the buffers it loads (a concatenation, a pad) is
    merged only where its if_then_else chain lands once in each expression (``_try_inline``): inlining
    substitutes the whole chain for every read, and SiLU's fast sigmoid reads its input a dozen times. MixNet's concatenation of 4 mixed-kernel convs
    followed by SiLU became one expression of 276 if_then_else (38 KB of TIR): 0.88 ms for 188k elements, and
    mixnet_s's three largest such kernels took 24 of its 34 ms. (DenseNet's concatenation -> BN -> ReLU, one
    read, still runs as one pass.)"""
    if infos is None:
        return None
    results, run = [], []  # as dlight does: runs of spatial blocks between the others
    for info in infos:
        if info.is_injective():
            run.append(info)
            continue
        results.extend(_try_inline(sch, run))
        results.append(info)
        run = []
    return results + _try_inline(sch, run)


def _try_inline(sch, blocks):
    """dlight's ``try_inline``: inline blocks into their consumers, else consumers into their producer, while
    any can be; a selection (``_is_selection``) only where that copies its choice once into each expression."""
    blocks = list(blocks)

    def downstream(block_rv) -> list:
        found, stack = [], list(sch.get_consumers(block_rv))
        while stack:
            c = stack.pop()
            if not any(sch.get(c).same_as(sch.get(f)) for f in found):
                found.append(c)
                stack.extend(sch.get_consumers(c))
        return found

    def single_reads(b) -> bool:
        """b may be inlined into its consumers: a selection only where each reads it once and none is
        downstream of another (SiLU's multiply reads it directly and through the sigmoid: two copies, and a fast
        sigmoid's dozen reads of its input each a copy); several such consumers (a split's parts) each choose."""
        if not _is_selection(sch, b.block_rv):
            return True
        consumers = sch.get_consumers(b.block_rv)
        if any(_reads(sch, c, b.block_rv) != 1 for c in consumers):
            return False
        below = [d for c in consumers for d in downstream(c)]
        return not any(sch.get(c).same_as(sch.get(d)) for c in consumers for d in below)

    def single_read(b) -> bool:  # b (a consumer) inlined into its producers: b their only consumer
        # (TVM's reverse_compute_inline accepted a producer with a second consumer and left that one reading a
        # buffer no longer written: "used before its definition" when compiling mixnet_s's concat -> add -> split)
        return all(len(sch.get_consumers(p)) == 1 and (not _is_selection(sch, p) or _reads(sch, b.block_rv, p) == 1)
                   for p in sch.get_producers(b.block_rv))

    def first(inline, allowed) -> bool:
        for i, b in enumerate(blocks):
            if not allowed(b):
                continue
            try:
                inline(b.block_rv)
            except tvm.s_tir.schedule.ScheduleError:  # this block can't be inlined (yet): try the next
                continue
            blocks.pop(i)
            return True
        return False

    while first(sch.compute_inline, single_reads) or first(sch.reverse_compute_inline, single_read):
        pass
    return blocks


# a loop nest of fewer iterations than this runs on one core: waking the thread pool costs about 0.6 us a call
# (Zen 5, a chain of tiny kernels; docs/targets.md), more than a second core saves on a few thousand
# elementwise iterations (fold_channel_scale's scaling of a small weight by a squeeze-excite gate)
MIN_PARALLEL_ITERATIONS = 4096


def parallel(sch, loop, block_rv) -> None:
    """``loop`` parallel unless the block's whole iteration domain (its reduction included) is below
    ``MIN_PARALLEL_ITERATIONS``."""
    if _domain(sch.get(block_rv)) >= MIN_PARALLEL_ITERATIONS:
        sch.parallel(loop)


class LaneRule(dlight.ScheduleRule):
    """A dlight rule for a target of ``lanes`` float32 SIMD lanes."""

    def __init__(self, lanes: int):
        self.lanes = lanes

    def normalized(self, func, target):
        """(a Schedule of ``func``, dlight's block infos of it), or None where the rule can't look at it."""
        if not isinstance(func, tvm.tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = tvm.s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        return None if infos is None else (sch, infos)


class ParallelFallback(LaneRule):
    def __init__(self, lanes: int):
        super().__init__(lanes)
        self.chunks = (2 * lanes, lanes)

    def _vector_suffix(self, sch, loops) -> int | None:
        """How many trailing loops to vectorize over: their extents' product is >= 4 vectors and a
        multiple of the lanes, with the outer loops left for the threads; None if no such run."""
        product = 1
        for count, loop in enumerate(reversed(loops), start=1):
            extent = sch.get(loop).extent
            if not isinstance(extent, tvm.tirx.IntImm):
                return None
            product *= extent.value
            if product >= 4 * self.lanes:
                return count if product % self.lanes == 0 and count < len(loops) else None
        return None

    def _row_suffix(self, sch, loops, min_rows: int = 8) -> int | None:
        """How many trailing loops make a row for LLVM's loop vectorizer: the last loop when it spans a vector;
        else the fewest whose extents' product does, leaving at least ``min_rows`` rows for the threads (a
        channel shuffle's 14x14 planes); None if there is no such run."""
        extents = [sch.get(loop).extent for loop in loops]
        if len(loops) < 2 or not all(isinstance(e, tvm.tirx.IntImm) for e in extents):
            return None
        extents = [e.value for e in extents]
        for count in range(1, len(loops)):
            if int(np.prod(extents[-count:])) >= self.lanes:
                return count if count == 1 or int(np.prod(extents[:-count])) >= min_rows else None
        return None

    # -- reductions: each kind is a test (on a block whose reduction loops are all trailing) and a schedule

    @staticmethod
    def _trailing_reduction(sch, info) -> tuple[int, list[int]] | None:
        """(number of spatial loops, every loop's extent) when the reduction loops come last and every
        extent is static; else None."""
        kinds = [it.kind for it in info.iters]
        extents = [sch.get(it.loop_rv).extent for it in info.iters]
        if "R" not in kinds or not all(isinstance(e, tvm.tirx.IntImm) for e in extents):
            return None
        first = kinds.index("R")
        if not all(k == "R" for k in kinds[first:]):
            return None
        return first, [e.value for e in extents]

    def _is_blocked_reduction(self, sch, info) -> bool:
        """The innermost data-parallel loop is one to four whole vectors (a blocked layout's channel block)."""
        shape = self._trailing_reduction(sch, info)
        if shape is None or shape[0] < 2:
            return False
        inner = shape[1][shape[0] - 1]
        return inner % self.lanes == 0 and inner <= 4 * self.lanes

    def _is_contiguous_reduction(self, sch, info) -> bool:
        """The reduction runs over the innermost axes of every buffer it reads, at least four whole vectors
        of them (a spatial mean of NCHW)."""
        shape = self._trailing_reduction(sch, info)
        if shape is None or shape[0] < 1:
            return False
        reduced = int(np.prod(shape[1][shape[0]:]))
        if reduced % self.lanes or reduced < 4 * self.lanes:
            return False
        block = sch.get(info.block_rv)
        reduce_vars = [iv.var for iv in block.iter_vars if iv.iter_type == tvm.tirx.IterVar.CommReduce]
        for region in block.reads:
            if region.source.same_as(block.writes[0].source):
                continue
            tail = list(region.region)[-len(reduce_vars):]
            if len(region.region) < len(reduce_vars) or not all(
                    r.min.same_as(v) and isinstance(r.extent, tvm.tirx.IntImm) and r.extent.value == 1
                    for r, v in zip(tail, reduce_vars)):
                return False
        return True

    def _vectorize_blocked_reduction(self, sch, info, spatial) -> list[str]:
        """parallel(outer spatial) > reduction loops > vectorize(the channel block), and the reduction's
        epilogue (a mean's division) in the same parallel loop (``_epilogue_under``)."""
        reductions = [it.loop_rv for it in info.iters[len(spatial):]]
        inner = spatial[-1]
        sch.reorder(*reductions, inner)
        outer = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
        parallel(sch, outer, info.block_rv)
        sch.vectorize(inner)
        placed = self._epilogue_under(sch, info.block_rv, outer)
        sch.decompose_reduction(info.block_rv, reductions[0])
        return placed

    def _epilogue_under(self, sch, reduction_rv, outer) -> list[str]:
        """The reduction's one elementwise consumer (the division of a mean, a pool's average) computed under
        the reduction's parallel loop, vectorized over its last loop where that is whole vectors: each task
        divides what it summed. On its own the division was a second parallel loop, scalar: a second wake-up
        of the thread pool in a kernel of a few microseconds (a global average pool of 512 x 7 x 7)."""
        consumers = sch.get_consumers(reduction_rv)
        if len(consumers) != 1:
            return []
        epilogue = consumers[0]
        block = sch.get(epilogue)
        if any(iv.iter_type != tvm.tirx.IterVar.DataPar for iv in block.iter_vars) or len(
                sch.get_producers(epilogue)) != 1:
            return []
        sch.reverse_compute_at(epilogue, outer)
        last = sch.get_loops(epilogue)[-1]
        extent = sch.get(last).extent
        if isinstance(extent, tvm.tirx.IntImm) and extent.value % self.lanes == 0:
            sch.vectorize(last)
        return [block.name_hint]

    def _rfactor_contiguous_reduction(self, sch, info, spatial) -> None:
        """parallel(spatial) > the reduction split into vectors: sum_r x[r] = sum_l (sum_j x[j L + l]), the inner
        sums in one vector accumulator (rfactor), then one horizontal sum of L lanes."""
        reductions = [it.loop_rv for it in info.iters[len(spatial):]]
        fused = sch.fuse(*reductions) if len(reductions) > 1 else reductions[0]
        _, lane = sch.split(fused, [None, self.lanes])
        rank = len(sch.get(info.block_rv).writes[0].region)  # the partial sums: the output with a lane axis last
        partial = sch.rfactor(lane, factor_axis=rank)  # takes the loops; the sum of lanes gets new ones
        outer = sch.get_loops(partial)[:len(spatial)]
        outer = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        parallel(sch, outer, partial)
        sch.reverse_compute_at(info.block_rv, outer)
        *_, step, lane = sch.get_loops(partial)
        sch.vectorize(lane)
        sch.decompose_reduction(partial, step)

    def _schedule_reduction(self, sch, info, spatial) -> list[str] | None:
        """The names of the blocks placed with the reduction (its epilogue), or None if no schedule applies."""
        if self._is_blocked_reduction(sch, info):
            return self._vectorize_blocked_reduction(sch, info, spatial)
        if self._is_contiguous_reduction(sch, info):
            self._rfactor_contiguous_reduction(sch, info, spatial)
            return []
        return None

    def apply(self, func, target, _tunable):
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        sch = tvm.s_tir.Schedule(func)
        infos = _inline_spatial(sch, normalize_prim_func(sch))  # one pass over memory, not five
        if infos is None:
            return None
        changed, placed = False, set()
        for info in infos:
            if sch.get(info.block_rv).name_hint in placed:  # an epilogue computed under its reduction's loop
                continue
            spatial = []
            for it in info.iters:
                if it.kind != "S":
                    break
                spatial.append(it.loop_rv)
            if not spatial:
                continue
            elementwise = len(spatial) == len(info.iters)
            if not elementwise and (with_reduction := self._schedule_reduction(sch, info, spatial)) is not None:
                placed.update(with_reduction)
                changed = True
                continue
            suffix = self._vector_suffix(sch, spatial) if elementwise else None
            if suffix is not None:
                outer, inner = spatial[:-suffix], spatial[-suffix:]
                parallel(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0], info.block_rv)
                inner = sch.fuse(*inner) if len(inner) > 1 else inner[0]
                sch.vectorize(sch.split(inner, [None, self.lanes])[1])
                changed = True
                continue
            rows = self._row_suffix(sch, spatial) if elementwise else None
            if rows is not None:
                # rows that are not whole vectors (a pad to 113 columns; a channel shuffle's 14x14 planes): the
                # threads take the rows and LLVM's loop vectorizer the row, with a scalar tail; vectorizing the
                # fused loop instead computed each lane's row and column by division: a gather (HGNetV2's stem
                # pad: 376-392 us; shufflenet_v2's shuffle of 48 + 48 channels at 14x14: see _row_suffix)
                outer, inner = spatial[:-rows], spatial[-rows:]
                parallel(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0], info.block_rv)
                if len(inner) > 1:
                    sch.fuse(*inner)
                changed = True
                continue
            fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
            extent = sch.get(fused).extent
            lanes = next((v for v in self.chunks if isinstance(extent, tvm.tirx.IntImm) and extent.value % v == 0
                          and extent.value > v), None)
            if lanes is not None and len(spatial) == len(info.iters):  # elementwise: vectorize the tail
                outer, inner = sch.split(fused, [None, lanes])
                parallel(sch, outer, info.block_rv)
                sch.vectorize(inner)
            else:
                parallel(sch, fused, info.block_rv)
            changed = True
        return sch if changed else None


class VectorReduction(ParallelFallback):
    """ParallelFallback for the functions whose reductions all vectorize (blocked or contiguous, above),
    applied before dlight's CPU reduction rule, which keeps one scalar accumulator per output: a chain of
    dependent adds, one an element. With it a squeeze-excite mean of 144 channels at 56x56 in NCHW took
    0.18 ms, 4x its memory bound, and one of a blocked tensor reduced one channel at a time with strided
    loads (1.0 ms at 112x112, 8x). Functions with any other reduction: None (dlight's rule takes them)."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        sch = tvm.s_tir.Schedule(func)
        reductions = [info for info in normalize_prim_func(sch) or () if any(it.kind == "R" for it in info.iters)]
        if not reductions or not all(self._is_blocked_reduction(sch, info) or self._is_contiguous_reduction(sch, info)
                                     for info in reductions):
            return None
        return super().apply(func, target, _tunable)


# a reduction block run more than this many times its iteration domain (a split's guarded tail runs it at
# most twice) recomputes its value: a loop fused over more axes than its bindings use
RECOMPUTE_SLACK = 2


def _extent(expr) -> int:
    return expr.value if isinstance(expr, tvm.tirx.IntImm) else 1


def _runs(loops) -> int:
    return int(np.prod([_extent(loop.extent) for loop in loops]))


def _domain(block) -> int:
    return int(np.prod([_extent(iv.dom.extent) for iv in block.iter_vars]))


def _recomputes_a_reduction(func: tvm.tirx.PrimFunc) -> bool:
    """Whether a reduction block sits under a loop (extent > 1) that none of its bindings reads: it then
    recomputes the same value on every iteration of that loop, and, if that loop is parallel, writes it
    into one shared accumulator from every thread (a race); or under loops that run it more than
    ``RECOMPUTE_SLACK`` times its domain (a fused loop part of whose axes the bindings don't use: CoaT's
    softmax over the tokens, [1, 8, 3137, 8] over axis 2, recomputed its sums for each of the 3137 tokens,
    1.5 s a call)."""
    found = False

    def walk(stmt, loops):
        nonlocal found
        if isinstance(stmt, tvm.tirx.For):
            walk(stmt.body, loops + [stmt])
        elif isinstance(stmt, tvm.tirx.SeqStmt):
            for s in stmt.seq:
                walk(s, loops)
        elif isinstance(stmt, tvm.s_tir.SBlockRealize):
            block = stmt.block
            if any(iv.iter_type == tvm.tirx.IterVar.CommReduce for iv in block.iter_vars):
                used = [v for value in stmt.iter_values for v in tvm.tirx.analysis.undefined_vars(value, [])]
                found = found or any(
                    not (isinstance(loop.extent, tvm.tirx.IntImm) and loop.extent.value == 1)
                    and not any(v.same_as(loop.loop_var) for v in used) for loop in loops)
                found = found or _runs(loops) > RECOMPUTE_SLACK * _domain(block)
            walk(block.body, loops)
        elif isinstance(stmt, tvm.tirx.IfThenElse):
            walk(stmt.then_case, loops)
            if stmt.else_case is not None:
                walk(stmt.else_case, loops)
        elif getattr(stmt, "body", None) is not None:
            walk(stmt.body, loops)

    walk(func.body, [])
    return found


class CheckedReduction(dlight.cpu.Reduction):
    """dlight's CPU reduction rule, declined where its schedule recomputes a reduction for every element of an
    axis the reduction doesn't have (``_recomputes_a_reduction``): a softmax or layer norm over [1, N] puts
    both sums under the output's parallel loop over N (a softmax of 1000 logits: 1.2 ms and a race). Those
    functions go to ParallelFallback instead."""

    def apply(self, func, target, tunable):
        sch = super().apply(func, target, tunable)
        if isinstance(sch, tvm.s_tir.Schedule) and _recomputes_a_reduction(sch.mod["main"]):
            return None
        return sch


class BoundedGEMV(dlight.cpu.GEMV):
    """dlight's CPU GEMV rule with its explicit unrolling capped at ``MAX_UNROLL`` steps. On a matrix-vector
    product whose rows it vectorizes (GCNet's global context, [64, 1600] x [1600, 1]: a gather of 64 rows per
    step) it unrolls 256 steps of the reduction, and LLVM took 20 s to compile each such kernel (gcresnet33ts:
    over 5 minutes in all); capped at 16, 0.2 s, and the kernel ran 24-26 us instead of 34."""

    MAX_UNROLL = 16

    def apply(self, func, target, tunable):
        sch = super().apply(func, target, tunable)
        if not isinstance(sch, tvm.s_tir.Schedule):
            return sch
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        for block in blocks:
            blocks += sch.get_child_blocks(block)  # blocks nested in it (visited in turn)
            for loop in sch.get_loops(block):
                step = sch.get(loop).annotations.get("pragma_auto_unroll_max_step")
                if step is not None and int(step) > self.MAX_UNROLL:
                    sch.unannotate(loop, "pragma_auto_unroll_max_step")
                    sch.annotate(loop, "pragma_auto_unroll_max_step", self.MAX_UNROLL)
        return sch
