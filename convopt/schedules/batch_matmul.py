"""A CPU schedule for the matrix products TVM generates between two activations (attention's q k^T and
attn v in the hybrid CNNs: MobileViT, EfficientFormer, EfficientViT's linear attention, EdgeNeXt, LeViT),
with their elementwise epilogue (attention's scale):

    C[b..., i, j] = epilogue(sum_k A[b..., i, k] B[b..., k, j])        (A or B may broadcast batch axes)

convopt's own dense kernel (schedules/dense.py) multiplies by a constant weight it packs once; these
operands are computed per call, so the kernel reads them as they are: B's rows are contiguous in j, so a
register tile of ``rows`` rows of C by ``vectors`` vectors of j accumulates one broadcast of A[i, k] times
one vector load of B[k, j] per FMA, k innermost:

    parallel(b..., i / rows) > j / (vectors L) > k > unroll(rows) > unroll(vectors) > vectorize(L)

then the tile (and its epilogue, inlined) is stored. Where i or j is not a whole number of tiles, the
operands are first copied zero-padded to whole tiles (``pad_einsum``), so that no lane of the accumulation is
guarded (TVM's vectorizer scalarizes a loop with a guarded lane): each task's rows of A before its tiles, and
all of B once, in a parallel pass of its own before the tasks (copied in every task, B was copied M / rows
times over: q k^T over 14 x 14 tokens, [1, 10, 196, 32] x [1, 10, 32, 196], ran at 126 GFLOP/s against 322
for 192 tokens, and at 260 with B copied once; caformer_s18 0.959, mobilevit_s 0.939 end to end, Intel
AVX-512, benchmarks/results/batch_matmul_pad_s54_rocketlake.md). The store of the last column tile is still
guarded. Left to ParallelFallback (one loop nest parallelized and its innermost loop vectorized over the
reduction's output, k innermost, a scalar FMA chain per element), mobilevit_xxs's q k^T ([4, 4, 196, 16] x
[4, 4, 16, 196]) ran at 4.6 GFLOP/s, 45% of the model's time. (Splitting off the last column tile with TVM's ``loop_partition`` crashed TVM 0.27.)

It is a dlight ScheduleRule, applied before convopt's other CPU rules (backends/tvm_backend.py
default_rules). A matrix product whose B is indexed [..., j, k] (a transpose fused in) is not matched.
"""

from __future__ import annotations

import tvm

from . import tiling
from .cpu_fallback import LaneRule


PAD_B_ONCE = True  # module constant, read at build time (benchmarks/constant_ab.py compares builds without it)


def _vars_of(region) -> list:
    """The iteration variable each axis of an access region reads (None for a constant index)."""
    out = []
    for r in region.region:
        if not (isinstance(r.extent, tvm.tirx.IntImm) and r.extent.value == 1):
            return None
        out.append(r.min if isinstance(r.min, tvm.tirx.Var) else None)
    return out


def matmul_axes(block) -> tuple[int, int, int] | None:
    """(the iteration index of i, of j, of k) when ``block`` computes C[..., i, j] += A[..., i, k] B[..., k, j]
    (its batch axes any spatial iterators both may read, or not), else None."""
    iters = list(block.iter_vars)
    kinds = [iv.iter_type for iv in iters]
    reduce = [n for n, kind in enumerate(kinds) if kind == tvm.tirx.IterVar.CommReduce]
    if len(reduce) != 1 or reduce[0] != len(iters) - 1 or len(iters) < 3 or len(block.writes) != 1:
        return None
    out = block.writes[0]
    reads = [r for r in block.reads if not r.source.same_as(out.source)]
    if len(reads) != 2:
        return None
    k_var, i_var, j_var = iters[-1].var, iters[-3].var, iters[-2].var
    a, b, c = _vars_of(reads[0]), _vars_of(reads[1]), _vars_of(out)
    if a is None or b is None or c is None or len(a) < 2 or len(b) < 2:
        return None

    def same(v, w):
        return v is not None and v.same_as(w)

    if not (same(c[-2], i_var) and same(c[-1], j_var)):
        return None
    for first, second in ((a, b), (b, a)):
        if same(first[-2], i_var) and same(first[-1], k_var) and same(second[-2], k_var) and same(second[-1], j_var):
            return len(iters) - 3, len(iters) - 2, len(iters) - 1
    return None


def _b_operand(block):
    """The buffer ``block`` (a matrix product, ``matmul_axes``) reads as B[..., k, j]."""
    i_var, j_var, k_var = (iv.var for iv in list(block.iter_vars)[-3:])
    out = block.writes[0].source
    for read in block.reads:
        axes = _vars_of(read)
        if not read.source.same_as(out) and axes and len(axes) >= 2 and axes[-2] is not None \
                and axes[-2].same_as(k_var) and axes[-1] is not None and axes[-1].same_as(j_var):
            return read.source
    return None


def register_tile(rows: int, columns: int, lanes: int) -> tuple[int, int]:
    """(rows of C, vectors of j) per register tile: up to 2 vectors of j (fewer when j is shorter), and as
    many rows as the accumulator budget allows (``tiling.accumulators``: 8 on AVX2, 16 on AVX-512)."""
    vectors = max(1, min(2, -(-columns // lanes)))
    return max(1, min(rows, tiling.accumulators(lanes) // vectors)), vectors


class BatchMatmul(LaneRule):
    """The schedule above, for a PrimFunc of one such matrix product and elementwise blocks after it."""

    def apply(self, func, target, tunable):
        normalized = self.normalized(func, target)
        if normalized is None:
            return None
        sch, infos = normalized
        reductions = [info for info in infos if info.is_reduction()]
        if len(reductions) != 1 or reductions[0] is not infos[0]:
            return None
        if not all(info.is_injective() for info in infos[1:]):
            return None
        block_rv = infos[0].block_rv
        if matmul_axes(sch.get(block_rv)) is None:
            return None
        extents = [sch.get(loop).extent for loop in sch.get_loops(block_rv)]
        if not all(isinstance(e, tvm.tirx.IntImm) for e in extents):
            return None
        try:
            return self._schedule(sch, block_rv, infos[1:], [e.value for e in extents])
        except tvm.s_tir.schedule.ScheduleError:  # a pattern the primitives refuse: left to the other rules
            return None

    def _schedule(self, sch, block_rv, epilogues, extents: list[int]):
        M, N = extents[-3], extents[-2]
        rows, vectors = register_tile(M, N, self.lanes)
        width = vectors * self.lanes
        producers = []
        if M % rows or N % width:  # whole tiles: the operands padded with zeros, so no lane is guarded
            sch.pad_einsum(block_rv, [1] * (len(extents) - 3) + [rows, width, 1])
            producers = list(sch.get_producers(block_rv))
        store = sch.cache_write(block_rv, 0, "local")  # the register tile, stored (with the epilogue) after k
        if producers:  # the tile's store then writes the unpadded output directly
            (unpad,) = sch.get_consumers(store)
            sch.compute_inline(store)
            store = unpad
        for epilogue in epilogues:
            sch.reverse_compute_inline(epilogue.block_rv)
        *batch, i, j, k = sch.get_loops(block_rv)
        io, ii = sch.split(i, [None, rows])
        jo, jv, jl = sch.split(j, [None, vectors, self.lanes])
        sch.reorder(*batch, io, jo, k, ii, jv, jl)
        outer = sch.fuse(*batch, io)
        sch.parallel(outer)
        sch.reverse_compute_at(store, jo, preserve_unit_loops=True)
        sch.unroll(ii)
        sch.unroll(jv)
        sch.vectorize(jl)
        sch.decompose_reduction(block_rv, k)  # its init loops keep these annotations
        *_, store_j = sch.get_loops(store)
        sch.vectorize(sch.split(store_j, [None, self.lanes])[1])
        padded_b = _b_operand(sch.get(block_rv))
        for pad in producers:
            if PAD_B_ONCE and sch.get(pad).writes[0].source.same_as(padded_b):
                # B padded once, in a parallel pass of its own: a task's tiles read all of its batch's B, and
                # copied per task (one per block of rows) it was copied M / rows times over
                *spatial, last = sch.get_loops(pad)
                sch.parallel(sch.fuse(*spatial))
            else:  # the padded rows of A of this task, copied before its tiles
                sch.compute_at(pad, outer, preserve_unit_loops=True)
                *_, last = sch.get_loops(pad)
            if sch.get(last).extent.value % self.lanes == 0:
                sch.vectorize(sch.split(last, [None, self.lanes])[1])
        return sch
