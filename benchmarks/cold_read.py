"""How long a read of N bytes takes with the caches flushed and warm: a plain parallel sum of the array (the
fastest a kernel can read it) beside the dense kernel (schedules/dense.py) over a weight of that size. A
kernel of a few hundred kilobytes in a model finds its operands where a whole run left them, so its time is
this cold read's, not its bytes at the copy bandwidth the roofline bound uses (docs/targets.md).

    python benchmarks/cold_read.py [--calls 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tvm
from tvm import te

from convopt.schedules import dense
from convopt.target import host_target

CHUNKS = 64  # parallel tasks of the sum


def _sum_kernel(target, floats: int):
    rows = floats // target.lanes // CHUNKS * CHUNKS
    a = te.placeholder((rows, target.lanes), name="a")
    r = te.reduce_axis((0, rows // CHUNKS), name="r")
    s = te.compute((CHUNKS, target.lanes), lambda c, lane: te.sum(a[c * (rows // CHUNKS) + r, lane], axis=r), name="s")
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([a, s])}))
    c, lane, rr = sch.get_loops(sch.get_sblock("s"))
    sch.reorder(c, rr, lane)
    sch.parallel(c)
    sch.vectorize(lane)
    return tvm.compile(sch.mod, target=target.tvm)["main"], [(rows, target.lanes), (CHUNKS, target.lanes)]


def _dense_kernel(target, in_features: int, out_features: int):
    packed = dense.pack_weight(np.zeros((out_features, in_features), np.float32), target.lanes).shape
    x, w, b = (te.placeholder(shape, name=n) for shape, n in (((1, in_features), "x"), (packed, "w"),
                                                               ((out_features,), "b")))
    out = dense.compute(x, w, b, out_features=out_features)
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([x, w, b, out])}))
    dense.schedule_cpu(sch, "main", target)
    return tvm.compile(sch.mod, target=target.tvm)["main"], [(1, in_features), packed, (out_features,),
                                                             (1, out_features)]


def _median_us(kernel, shapes, cold: bool, calls: int, flush: np.ndarray) -> float:
    args = [tvm.runtime.tensor(np.random.default_rng(0).random(s, np.float32)) for s in shapes]
    times = []
    for _ in range(calls):
        if cold:
            np.add(flush, 1.0, out=flush)  # 64 MB through the caches: the operands go back to memory
        start = time.perf_counter()
        kernel(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    target = host_target()
    target.configure_runtime()
    flush = np.ones(16 << 20, np.float32)
    print(f"{target.key}; median of {args.calls} calls, us (GB/s of the bytes read)")
    cases = [(f"sum of {kb} KB", *_sum_kernel(target, kb * 256)) for kb in (16, 221, 1024, 5120)]
    cases += [(f"dense {k} -> {n}", *_dense_kernel(target, k, n)) for k, n in ((1152, 48), (48, 1152), (1280, 1000))]
    for name, kernel, shapes in cases:
        read = 4 * int(np.prod(shapes[0 if name.startswith("sum") else 1]))
        warm, cold = (_median_us(kernel, shapes, c, args.calls, flush) for c in (False, True))
        print(f"{name:>22}: warm {warm:7.1f} ({read / warm / 1e3:5.1f}), cold {cold:7.1f} ({read / cold / 1e3:5.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
