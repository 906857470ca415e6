"""The machine's arithmetic roof: fp32 FMA throughput with every operand in a register, on all cores.

One core runs ``chains`` independent chains of vector FMAs, acc[r] = acc[r] * a + b, for ``ITERATIONS``
steps: 2 * lanes FLOPs per FMA, and enough chains in flight to cover the FMA latency on every FMA pipe
(Zen 4: 2 pipes x 4 cycles; Intel: 2 x 4), so the loop runs at the issue rate, not the latency.

    roof = cores * 2 * lanes * chains * ITERATIONS / seconds

measured on one core and multiplied by the cores: on a shared machine another tenant's burst took a core
for the whole measurement and halved an all-core figure (111 against 216-234 GFLOP/s on Zen 4), which the
cache then kept; one core still gets a core of its own. (All cores at once may clock a little lower: the
roof errs on the high side, so a kernel's distance to it does not flatter the kernel.)

A GEMM library's rate is not the roof: on Zen 4 (2 cores) PyTorch's 1024^3 GEMM ran at 126-148 GFLOP/s
while this loop ran at 230, and convopt's own conv kernels at up to 222. Judging kernels against the GEMM
rate called them 150% of peak. The cost model keeps the GEMM rate as its unit (its coefficients were
fitted against it); `convopt report` and the roofline plot use this roof.
"""

from __future__ import annotations

import time

import numpy as np
import tvm
from tvm.script import tirx as T

from ..target import Target

ITERATIONS = 100_000
F32 = "float32"


def chains_for(target: Target) -> int:
    """Independent accumulators per core: all vector registers but a few (AVX2 16 -> 12, AVX-512 32 -> 24)."""
    return target.vector_registers * 3 // 4


def fma_loop(cores: int, chains: int, lanes: int, iterations: int = ITERATIONS) -> tvm.tirx.PrimFunc:
    @T.prim_func(s_tir=False)
    def fma_peak(seed: T.Buffer((cores, chains, lanes), F32), out: T.Buffer((cores, chains, lanes), F32)):
        T.func_attr({"tirx.noalias": True})
        for c in T.parallel(cores):
            acc = T.alloc_buffer((chains, lanes), F32, scope="local")
            for r in T.unroll(chains):
                for lane in T.vectorized(lanes):
                    acc[r, lane] = seed[c, r, lane]
            for _ in range(iterations):
                for r in T.unroll(chains):
                    for lane in T.vectorized(lanes):
                        acc[r, lane] = acc[r, lane] * T.float32(0.9999) + T.float32(0.0001)
            for r in T.unroll(chains):  # stored, so the chains are not dead code
                for lane in T.vectorized(lanes):
                    out[c, r, lane] = acc[r, lane]

    return fma_peak


def fma_peak_flops(target: Target, repeat: int = 7) -> float:
    """The roof of ``target`` (a CPU this host runs), FLOP/s: one core's rate times ``target.cores``."""
    if not target.is_cpu or not target.runs_here:
        raise ValueError(f"the FMA roof is measured on a CPU target this host runs, not {target.key}")
    chains = chains_for(target)
    run = tvm.compile(tvm.IRModule({"main": fma_loop(1, chains, target.lanes)}), target=target.tvm)
    shape = (1, chains, target.lanes)
    seed = tvm.runtime.tensor(np.ones(shape, F32), target.device())
    out = tvm.runtime.empty(shape, F32, target.device())
    run["main"](seed, out)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run["main"](seed, out)
        best = min(best, time.perf_counter() - start)
    return target.cores * 2 * target.lanes * chains * ITERATIONS / best
