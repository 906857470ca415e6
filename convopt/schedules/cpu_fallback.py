"""A default CPU schedule for the ops convopt has no kernel of its own for (elementwise ops, pooling,
norms, softmax, transposes): parallelize each block over its leading data-parallel loops.

TVM's generic legalization leaves every loop nest serial, so on a 2-core machine an unscheduled
GELU or layer norm runs on one core. This rule inlines chains of elementwise blocks (so a fused
SiLU reads and writes memory once), fuses each remaining block's leading spatial loops into one,
parallelizes it, and for purely elementwise blocks vectorizes an inner chunk of two vectors or one
(``lanes``: the target's SIMD width; with relax's FastMathTransform, exp / erf / tanh are polynomials, so
this vectorizes them too). It is a dlight ScheduleRule, applied after dlight's CPU GEMV and reduction
rules had their turn.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial


class ParallelFallback(dlight.ScheduleRule):
    def __init__(self, lanes: int):
        self.chunks = (2 * lanes, lanes)

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
