"""A default CPU schedule for the ops convopt has no kernel of its own for (elementwise ops, pooling,
norms, softmax, transposes): parallelize each block over its leading data-parallel loops.

TVM's generic legalization leaves every loop nest serial, so on a 2-core machine an unscheduled
GELU or layer norm runs on one core. This rule fuses each block's leading spatial loops into one,
splits it so each core gets a contiguous chunk, and parallelizes the outer part; the innermost loop
is left to LLVM's vectorizer. It is a dlight ScheduleRule, applied after dlight's CPU GEMV and
reduction rules had their turn.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func


class ParallelFallback(dlight.ScheduleRule):
    def apply(self, func, target, _tunable):
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        sch = tvm.s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
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
            sch.parallel(fused)
            changed = True
        return sch if changed else None
