"""Dense layers (``linear``: y = x W^T + b over the last axis) as a register-tiled GEMM with a packed weight.

The weight [N, K] is packed once, at build time, into ``[ceil(N / L), K, L]`` (L = the SIMD lanes; the last
block zero-padded), so the kernel streams it contiguously and every output vector is one FMA accumulator:

    y[m, n] = sum_k x[m, k] * Wp[n // L, k, n % L] + b[n]

Schedule (x86): parallel over (row tiles, column tiles) > k > unroll(mt rows) > unroll(nv vectors) >
vectorize(L), with mt x nv accumulators (tiling.dense_tile: the classifier's single row gets nv vectors of
independent accumulators, larger M a 4-6 row tile), the bias added as each tile is written back. A batch-1
classifier (1280 -> 1000) is a stream over its weight, bound by memory bandwidth: TVM's generic schedule
read the transposed weight with a stride of N and ran it 4-9x slower than that bound.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te

from . import tiling
from .conv_spec import sample
from .activations import activate

GEMM_BLOCK = "dense_gemm"
OUTPUT_BLOCK = "dense_out"


def pack_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """[N, K] -> [ceil(N / lanes), K, lanes], zero-padded."""
    n, k = weight.shape
    blocks = -(-n // lanes)
    padded = np.zeros((blocks * lanes, k), np.float32)
    padded[:n] = weight
    return np.ascontiguousarray(padded.reshape(blocks, lanes, k).transpose(0, 2, 1))


def compute(data: te.Tensor, packed: te.Tensor, bias: te.Tensor | None = None, *, out_features: int,
            activation: str = "none") -> te.Tensor:
    """y [M, N] of x [M, K] with the packed weight; bias [N] and the activation (activations.py) fused."""
    m_, k_ = (int(v) for v in data.shape)
    blocks, _, lanes = (int(v) for v in packed.shape)
    k = te.reduce_axis((0, k_), name="k")
    acc = te.compute((m_, blocks, lanes), lambda m, b, lane: te.sum(data[m, k] * packed[b, k, lane], axis=k),
                     name=GEMM_BLOCK)

    def value(m, n):
        v = acc[m, n // lanes, n % lanes]
        return activate(v + bias[n] if bias is not None else v, activation)

    return te.compute((m_, out_features), value, name=OUTPUT_BLOCK)


def schedule_cpu(sch: tvm.s_tir.Schedule, func_name: str | None, target) -> None:
    if func_name is not None:
        sch.work_on(func_name)
    gemm = sch.get_sblock(GEMM_BLOCK, func_name)
    out = sch.get_sblock(OUTPUT_BLOCK, func_name)
    m, b, lane, k = sch.get_loops(gemm)
    rows, blocks = int(sch.get(m).extent), int(sch.get(b).extent)
    mt, nv = tiling.dense_tile(rows, blocks, target.lanes)
    # tunable: both tiles are samples around the default (both split exactly)
    mo, mi = sch.split(m, [None, sample(sch, tiling.divisor_tiles(rows, 6, mt), mt)])
    bo, bi = sch.split(b, [None, sample(sch, tiling.divisor_tiles(blocks, tiling.accumulators(target.lanes), nv), nv)])
    sch.reorder(mo, bo, k, mi, bi, lane)
    sch.parallel(sch.fuse(mo, bo))
    sch.unroll(mi)
    sch.unroll(bi)
    sch.vectorize(lane)
    # the tile's accumulators stay on the stack; the output (with its bias) is written per tile
    sch.reverse_compute_at(out, sch.get_loops(gemm)[0], preserve_unit_loops=True)
    sch.decompose_reduction(gemm, k)
    last = sch.get_loops(out)[-1]
    extent = int(sch.get(last).extent)
    if extent % target.lanes == 0:
        sch.vectorize(sch.split(last, [None, target.lanes])[1])
