"""Dense layers (``linear``: y = x W^T + b over the last axis) as a register-tiled GEMM with a packed weight.

The weight [N, K] is packed once, at build time, into ``[ceil(N / L), K, L]`` (L = the SIMD lanes; the last
block zero-padded), so the kernel streams it contiguously and every output vector is one FMA accumulator:

    y[m, n] = sum_k x[m, k] * Wp[n // L, k, n % L] + b[n]

Schedule (x86): parallel over (row tiles, column tiles) > k > unroll(mt rows) > unroll(nv vectors) >
vectorize(L), the two tile loops swapped where the weight is the larger operand (tiling.columns_outermost:
each column tile's weights then read once), with mt x nv accumulators (tiling.dense_tile: the classifier's
single row gets nv vectors of independent accumulators, larger M a 2-7 row tile), the bias added as each
tile is written back. A batch-1 classifier (1280 -> 1000) is a stream over its weight, bound by memory
bandwidth: TVM's generic schedule read the transposed weight with a stride of N and ran it 4-9x slower than
that bound.

A prologue (``Prologue``, planned by backends/conv_kernels.py ``plan_prologues``) computes the product's input
from the value before it, in the same kernel: a classifier head's global average pool of a channel-blocked map
x [M, K/b, H, W, b] and the layer norm over K after it (ConvNeXt's and InceptionNeXt's heads; the norm's scale
and shift are folded into W and b where the weight is packed):

    p[m, k]  = (1 / HW) sum_{h,w} x[m, k / b, h, w, k % b]          (or the input row itself, without a pool)
    u[m, k]  = (p[m, k] - mean_k p) / sqrt(var_k p + eps)            (or p, without a norm)
    y[m, n]  = sum_k u[m, k] * Wp[n // L, k, n % L] + b[n]

Each core computes all of u (so the pooled map is at most ``MAX_POOLED_BYTES``, which every core reads: 2048
channels at 7x7 are 400 KB; a larger one keeps its pool kernel, which splits the reads) and then its share of
the tiles, so the kernel is one thread-pool wake where the pool, the norm and the product
were a kernel each, a few microseconds apiece and each further above its roofline bound than any larger
kernel (benchmarks/results/roofline_summary_s50_untuned_turns_znver5.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te

from . import tiling
from .conv_spec import sample
from .activations import activate

GEMM_BLOCK = "dense_gemm"
OUTPUT_BLOCK = "dense_out"
POOL_BLOCK = "dense_pool"  # the prologue's blocks, in the order they run
MEAN_BLOCK = "dense_norm_sum"
VARIANCE_BLOCK = "dense_norm_squares"
INPUT_BLOCK = "dense_input"
PROLOGUE_BLOCKS = (POOL_BLOCK, MEAN_BLOCK, VARIANCE_BLOCK, INPUT_BLOCK)
MAX_POOLED_BYTES = 1 << 20  # the largest map a prologue pools: each core reads all of it (an L2's worth)


@dataclass(frozen=True)
class Prologue:
    """What the kernel computes from its input before the product: a global average pool of a channel-blocked
    map [M, K/b, H, W, b] (``pool``), then a layer norm over K with this epsilon (``norm_eps``; its scale and shift
    already folded into the weight and bias, ``fold_norm``)."""

    pool: bool = False
    norm_eps: float | None = None


def fold_norm(weight: np.ndarray, bias: np.ndarray | None, gamma: np.ndarray | None, beta: np.ndarray | None):
    """(W', b') with W' u + b' = W (u * gamma + beta) + b: the norm's affine folded into the dense layer."""
    weight64 = weight.astype(np.float64)
    folded_bias = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
    if beta is not None:
        folded_bias = folded_bias + weight64 @ beta.astype(np.float64)
    if gamma is not None:
        weight64 = weight64 * gamma.astype(np.float64)[None, :]
    return weight64.astype(np.float32), folded_bias.astype(np.float32)


def prologue_compute(x: te.Tensor, in_features: int, prologue: Prologue) -> te.Tensor:
    """u [M, K] of the module docstring, from x ([M, K/b, H, W, b] with a pool, else [M, K])."""
    if prologue.pool:
        rows, _, height, width, block = (int(v) for v in x.shape)
        rh, rw = te.reduce_axis((0, height), name="rh"), te.reduce_axis((0, width), name="rw")
        total = te.compute((rows, int(x.shape[1]), block), lambda m, c, lane: te.sum(x[m, c, rh, rw, lane],
                                                                                   axis=[rh, rw]), name=POOL_BLOCK)
        scale = 1.0 / (height * width)
        value = lambda m, k: total[m, k // block, k % block] * scale  # noqa: E731
    else:
        rows = int(x.shape[0])
        value = lambda m, k: x[m, k]  # noqa: E731
    if prologue.norm_eps is None:
        return te.compute((rows, in_features), value, name=INPUT_BLOCK)
    inv_k = 1.0 / in_features
    r = te.reduce_axis((0, in_features), name="r")
    total_u = te.compute((rows,), lambda m: te.sum(value(m, r), axis=r), name=MEAN_BLOCK)
    s = te.reduce_axis((0, in_features), name="s")
    squares = te.compute((rows,), lambda m: te.sum((value(m, s) - total_u[m] * inv_k) * (value(m, s) - total_u[m] * inv_k),
                                                   axis=s), name=VARIANCE_BLOCK)
    return te.compute((rows, in_features), lambda m, k: (value(m, k) - total_u[m] * inv_k)
                      * te.rsqrt(squares[m] * inv_k + prologue.norm_eps), name=INPUT_BLOCK)


def pack_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """[N, K] -> [ceil(N / lanes), K, lanes], zero-padded."""
    n, k = weight.shape
    blocks = -(-n // lanes)
    padded = np.zeros((blocks * lanes, k), np.float32)
    padded[:n] = weight
    return np.ascontiguousarray(padded.reshape(blocks, lanes, k).transpose(0, 2, 1))


def compute(data: te.Tensor, packed: te.Tensor, bias: te.Tensor | None = None, *, out_features: int,
            activation: str = "none", prologue: Prologue | None = None) -> te.Tensor:
    """y [M, N] of x [M, K] with the packed weight; bias [N] and the activation (activations.py) fused; with a
    ``prologue``, of the value before x (``prologue_compute``)."""
    blocks, k_, lanes = (int(v) for v in packed.shape)
    if prologue is not None:
        data = prologue_compute(data, k_, prologue)
    m_ = int(data.shape[0])
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
    outer = (bo, mo) if tiling.columns_outermost(rows, blocks * target.lanes) else (mo, bo)
    sch.reorder(*outer, k, mi, bi, lane)
    tiles = sch.fuse(*outer)
    present = {sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root", func_name))}
    prologue = [name for name in PROLOGUE_BLOCKS if name in present]
    if prologue:
        # one task per core computes the whole prologue, then its share of the tiles
        tasks = min(target.cores, int(sch.get(tiles).extent))
        task, tiles = sch.split(tiles, [tasks, None])
        sch.parallel(task)
        for name in reversed(prologue):  # consumers first: each producer lands before its reader
            sch.compute_at(sch.get_sblock(name, func_name), task, preserve_unit_loops=True)
        _vectorize_prologue(sch, func_name, prologue, target.lanes)
    else:
        sch.parallel(tiles)
    sch.unroll(mi)
    sch.unroll(bi)
    sch.vectorize(lane)
    # the tile's accumulators stay on the stack; the output (with its bias) is written per tile
    sch.reverse_compute_at(out, tiles, preserve_unit_loops=True)
    sch.decompose_reduction(gemm, k)
    if POOL_BLOCK in prologue:  # (last: the placements above need the pool still a whole reduction)
        pool = sch.get_sblock(POOL_BLOCK, func_name)
        sch.decompose_reduction(pool, sch.get_loops(pool)[-3])
    last = sch.get_loops(out)[-1]
    extent = int(sch.get(last).extent)
    if extent % target.lanes == 0:
        sch.vectorize(sch.split(last, [None, target.lanes])[1])


def _vectorize_prologue(sch, func_name: str | None, blocks: list[str], lanes: int) -> None:
    """Vectorize the pool over its channel block (the reduction over pixels outside it) and the input row."""
    if POOL_BLOCK in blocks:
        pool = sch.get_sblock(POOL_BLOCK, func_name)
        *_, m, c, lane, rh, rw = sch.get_loops(pool)
        sch.reorder(m, c, rh, rw, lane)
        sch.vectorize(lane)
    row = sch.get_sblock(INPUT_BLOCK, func_name)
    last = sch.get_loops(row)[-1]
    if int(sch.get(last).extent) % lanes == 0:
        sch.vectorize(sch.split(last, [None, lanes])[1])
