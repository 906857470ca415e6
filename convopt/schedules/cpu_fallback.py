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
vectorized inside the reduction loops. It is a dlight ScheduleRule, applied after dlight's CPU GEMV and
reduction rules had their turn; ``BlockedReduction`` is the same rule for the functions with such a
reduction, applied before dlight's reduction rule.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial


class ParallelFallback(dlight.ScheduleRule):
    def __init__(self, lanes: int):
        self.lanes = lanes
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

    def _vectorize_reduction(self, sch, info, spatial) -> bool:
        """parallel(outer spatial) > reduction loops > vectorize(innermost spatial), when that loop is one to
        four whole vectors (the channel block of a blocked layout) and every other loop is a reduction."""
        reductions = info.iters[len(spatial):]
        extent = sch.get(spatial[-1]).extent
        if (len(spatial) < 2 or any(it.kind != "R" for it in reductions) or not isinstance(extent, tvm.tirx.IntImm)
                or extent.value % self.lanes or extent.value > 4 * self.lanes):
            return False
        inner = spatial[-1]
        sch.reorder(*[it.loop_rv for it in reductions], inner)
        sch.parallel(sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0])
        sch.vectorize(inner)
        sch.decompose_reduction(info.block_rv, reductions[0].loop_rv)
        return True

    def apply(self, func, target, _tunable):
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        sch = tvm.s_tir.Schedule(func)
        infos = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))  # one pass over memory, not five
        if infos is None:
            return None
        changed = False
        for info in infos:
            spatial = []
            for it in info.iters:
                if it.kind != "S":
                    break
                spatial.append(it.loop_rv)
            if not spatial:
                continue
            elementwise = len(spatial) == len(info.iters)
            if not elementwise and self._vectorize_reduction(sch, info, spatial):
                changed = True
                continue
            suffix = self._vector_suffix(sch, spatial) if elementwise else None
            if suffix is not None:
                outer, inner = spatial[:-suffix], spatial[-suffix:]
                sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
                inner = sch.fuse(*inner) if len(inner) > 1 else inner[0]
                sch.vectorize(sch.split(inner, [None, self.lanes])[1])
                changed = True
                continue
            fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
            extent = sch.get(fused).extent
            lanes = next((v for v in self.chunks if isinstance(extent, tvm.tirx.IntImm) and extent.value % v == 0
                          and extent.value > v), None)
            if lanes is not None and len(spatial) == len(info.iters):  # elementwise: vectorize the tail
                outer, inner = sch.split(fused, [None, lanes])
                sch.parallel(outer)
                sch.vectorize(inner)
            else:
                sch.parallel(fused)
            changed = True
        return sch if changed else None


class BlockedReduction(ParallelFallback):
    """ParallelFallback for functions with a reduction over a blocked tensor's spatial axes (a spatial mean
    or a pool of NCHW[lanes]c: the innermost data-parallel loop is the channel block), applied before
    dlight's CPU reduction rule, which would reduce such a tensor one channel at a time with strided loads
    (a squeeze-excite mean at 112x112: 1.0 ms, 8x its memory bound). Other functions: None."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tvm.tirx.PrimFunc) or not self._has_blocked_reduction(func):
            return None
        return super().apply(func, target, _tunable)

    def _has_blocked_reduction(self, func) -> bool:
        sch = tvm.s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        for info in infos or ():
            kinds = [it.kind for it in info.iters]
            if "R" not in kinds:
                continue
            spatial = kinds.index("R")
            extent = sch.get(info.iters[spatial - 1].loop_rv).extent if spatial else None
            if (spatial >= 2 and all(k == "R" for k in kinds[spatial:]) and isinstance(extent, tvm.tirx.IntImm)
                    and extent.value % self.lanes == 0 and extent.value <= 4 * self.lanes):
                return True
        return False
