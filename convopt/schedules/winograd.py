"""Winograd convolution F(m x m, 3 x 3), m = 2 ("winograd2") or 4 ("winograd4"), Lavin & Gray 2016.

Math.  With alpha = m + 2, each m x m output tile Y of one (image, output channel) is

    Y = A^T [ sum_c (G g_oc G^T) . (B^T d_c B) ] A

where d_c is the alpha x alpha input patch of the tile in channel c (tiles overlap by 2) and
``.`` the elementwise product.  F(2x2) uses the points (0, 1, -1, inf), F(4x4) the points
(0, 1, -1, 2, -2, inf) with the matrices of Lavin & Gray (``_MATRICES``).  The alpha^2 products
summed over c are alpha^2 independent GEMMs, which hold the multiplications: alpha^2 / m^2 per
output and input channel instead of 9 (4 for m = 2, 2.25 for m = 4).

Stages (block names), with ob = lanes (the fp32 SIMD width; 1 for CUDA), Cp / Op = C / O rounded
up to ob, nH = ceil(OH / m), nW = ceil(OW / m), T = N nH nW tiles and Tp = T rounded up to the
GEMM's register-tile width tt in {4, 5, 6} (``tiling.winograd_tile_width``; GEMM columns past T repeat the last tile
and are never read back):

* build time (``prepare_weight``, numpy, float64): U = G g G^T as ``[alpha, alpha, Op/ob, Cp, ob]``;
* ``wino_pad``  P[N, Cp/ob, nH m + 2, nW m + 2, ob]: the zero-padded input, channel-blocked so
  that the input transform loads whole vectors (hence not ``conv_spec.pad_input``, which stays NCHW);
  the extra bottom/right zeros complete the last row/column of tiles;
* ``wino_V``    V[alpha, alpha, N, nH, nW, Cp] = B^T d B per (tile, channel);
* ``wino_M``    M[alpha, alpha, Op/ob, Tp, ob] = sum_c U[xi, nu, :, c, :] V[xi, nu, t, c];
* ``conv_out``  the output transform A^T M A, cropped to OH x OW, through the fused epilogue.

Every transform is an if_then_else over the (xi, nu) or (r, s) position whose branches are the
matrix products spelled out with constant coefficients (``_lincomb``: no term for a zero
coefficient, no multiply for +-1).  The schedules unroll those positions, so each folds to its own
branch, and LLVM shares the row sums common to several positions (the separable two-pass form).
Without unrolling (the CUDA default schedule) the branches are lazy: still no wasted multiplies.

Workspace (``workspace_bytes``) = 4 (N Cp (nH m + 2)(nW m + 2) + alpha^2 T Cp + alpha^2 Op Tp) bytes
(P, V, M) for the ``lanes`` the compute is built with (default 8: AVX2).  The GEMM's accumulator
tile (ot x tt x ob floats) lives on the stack.

CPU schedule (``schedule_cpu``): the pad is parallel over (n, channel block, row), vectorized over
the channel lanes.  The input transform is parallel over (tile, channel block), unrolled over
(xi, nu) and vectorized over the ob channels.  The GEMM is parallel over (xi, nu, pairs of
output-channel blocks); per tt tiles it accumulates an ot x tt x ob register tile (2 x 6 x 8 = 12
ymm accumulators with AVX2, broadcasting V and loading U vectors) over the Cp input channels, loop
order tiles/tt > c > tt > ot > ob.  The output transform + epilogue is parallel over (n,
output-channel block, tile row), unrolled over the tile's (r, s), vectorized over ob output channels.
CUDA uses ``conv_spec.schedule_cuda_default``.  Measured (1 thread, 64->64 @56x56): F(4x4) ~3x
faster than ``direct``; the GEMM is ~2/3 of the time, at ~85% of the FMA peak.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from . import prefetch, tiling
from .conv_spec import OUTPUT_BLOCK, ConvSpec, Lowering, loop_extent, output_compute, sample

VARIANTS = ("winograd2", "winograd4")
PAD_BLOCK, V_BLOCK, GEMM_BLOCK = "wino_pad", "wino_V", "wino_M"

_MATRICES = {  # m: (B^T, G, A^T)
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def _tile_size(variant: str) -> int:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return 2 if variant == "winograd2" else 4


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


@dataclass(frozen=True)
class _Geometry:
    m: int  # output tile
    alpha: int  # input tile, m + 2
    nh: int  # tile rows, columns
    nw: int
    tiles: int  # N nh nw
    tp: int  # tiles padded to the GEMM's register tile
    ob: int  # channel block (SIMD lanes)
    cp: int  # in / out channels padded to ob
    op: int
    hp: int  # padded input height, width
    wp: int


def _geometry(spec: ConvSpec, variant: str, lanes: int) -> _Geometry:
    m = _tile_size(variant)
    nh, nw = -(-spec.out_height // m), -(-spec.out_width // m)
    tiles = spec.batch * nh * nw
    return _Geometry(m, m + 2, nh, nw, tiles, _ceil(tiles, tiling.winograd_tile_width(tiles)), lanes, _ceil(spec.in_channels, lanes),
                     _ceil(spec.out_channels, lanes), nh * m + 2, nw * m + 2)


# ---------------------------------------------------------------- the lowering contract
def supports(spec: ConvSpec, variant: str) -> str | None:
    _tile_size(variant)
    if spec.kernel != (3, 3):
        return f"Winograd needs a 3x3 kernel, got {spec.kernel[0]}x{spec.kernel[1]}"
    if spec.stride != (1, 1):
        return f"Winograd needs stride 1, got {spec.stride[0]}x{spec.stride[1]}"
    if spec.dilation != (1, 1):
        return f"Winograd needs dilation 1, got {spec.dilation[0]}x{spec.dilation[1]}"
    if spec.groups != 1:
        return f"Winograd runs dense convs only (groups 1), got groups {spec.groups}"
    return None


def workspace_bytes(spec: ConvSpec, lanes: int, variant: str) -> int:
    """Bytes of P, V and M (see the module docstring) for a compute built with ``lanes``."""
    g = _geometry(spec, variant, lanes)
    a2 = g.alpha ** 2
    return 4 * (spec.batch * g.cp * g.hp * g.wp + a2 * g.tiles * g.cp + a2 * g.op * g.tp)


def prepare_weight(weight, spec: ConvSpec, lanes: int, variant: str) -> tuple[np.ndarray]:
    """OIHW -> U = G g G^T as [alpha, alpha, Op/ob, Cp, ob] (zero rows/columns for the padding)."""
    g = _geometry(spec, variant, lanes)
    G = np.array(_MATRICES[g.m][1], np.float64)
    u = np.einsum("xi,ocij,nj->xnoc", G, np.asarray(weight, np.float64), G)
    a, ob = g.alpha, g.ob
    padded = np.zeros((a, a, g.op, g.cp), np.float64)
    padded[:, :, : spec.out_channels, : spec.in_channels] = u
    packed = padded.reshape(a, a, g.op // ob, ob, g.cp).transpose(0, 1, 2, 4, 3)
    return (np.ascontiguousarray(packed, dtype=np.float32),)


def _lincomb(coeffs, term):
    """sum_k coeffs[k] * term(k): no term for a zero coefficient, no multiply for +-1 (the positive
    terms first, so no negation either: every row of B^T and A^T has one); term is called lazily."""
    out = None
    for k in sorted(range(len(coeffs)), key=lambda k: coeffs[k] < 0):
        c = coeffs[k]
        if c == 0:
            continue
        v = term(k) if abs(c) == 1 else tirx.const(float(abs(c)), "float32") * term(k)
        out = (v if c > 0 else -v) if out is None else (out + v if c > 0 else out - v)
    return out


def _select(index, branches):
    """branches[index] as a chain of lazy if_then_else (folds to one branch once index is constant)."""
    expr = branches[-1]
    for k in range(len(branches) - 2, -1, -1):
        expr = tirx.if_then_else(index == k, branches[k], expr)
    return expr


def _transform2d(rows, i, j, load):
    """(R load R^T)[i, j] for symbolic i, j: sum_a R[i][a] sum_b R[j][b] load(a, b)."""
    return _select(i, [_select(j, [_lincomb(ri, lambda a, rj=rj: _lincomb(rj, lambda b: load(a, b)))
                                   for rj in rows]) for ri in rows])


def compute(data, U, *, bias=None, residual=None, spec: ConvSpec, activation="none", lanes=8, out_block=None, variant):
    g = _geometry(spec, variant, lanes)
    m, a, ob, nh, nw, tiles = g.m, g.alpha, g.ob, g.nh, g.nw, g.tiles
    BT, _, AT = _MATRICES[m]
    exp_u = (a, a, g.op // ob, g.cp, ob)
    if tuple(int(v) for v in U.shape) != exp_u:
        raise ValueError(f"prepared weight shape {tuple(U.shape)}, expected {exp_u}")
    n_, c_, h, w = spec.batch, spec.in_channels, spec.height, spec.width
    ph, pw = spec.padding

    def pad(n, cb, y, x, cl):
        c = cb * ob + cl
        inside = tirx.all(c < c_, y >= ph, y < ph + h, x >= pw, x < pw + w)
        return tirx.if_then_else(inside, data[n, tirx.min(c, c_ - 1), y - ph, x - pw], tirx.const(0.0, "float32"))

    P = te.compute((n_, g.cp // ob, g.hp, g.wp, ob), pad, name=PAD_BLOCK)

    V = te.compute((a, a, n_, nh, nw, g.cp), lambda xi, nu, n, ty, tx, c: _transform2d(
        BT, xi, nu, lambda i, j: P[n, c // ob, ty * m + i, tx * m + j, c % ob]), name=V_BLOCK)

    def v_tile(xi, nu, t, c):  # GEMM tiles past the last one repeat it (never read back)
        t = tirx.min(t, tiles - 1) if g.tp > tiles else t
        return V[xi, nu, t // (nh * nw), t // nw % nh, t % nw, c]

    rc = te.reduce_axis((0, g.cp), name="rc")
    M = te.compute((a, a, g.op // ob, g.tp, ob),
                   lambda xi, nu, b, t, ol: te.sum(U[xi, nu, b, rc, ol] * v_tile(xi, nu, t, rc), axis=rc),
                   name=GEMM_BLOCK)

    def value_at(n, o, y, x):
        t = (n * nh + y // m) * nw + x // m
        return _transform2d(AT, y % m, x % m, lambda xi, nu: M[xi, nu, o // ob, t, o % ob])

    return output_compute(spec.output_shape, value_at, bias=bias, residual=residual, activation=activation,
                          out_block=out_block)


# ---------------------------------------------------------------- schedules

def _largest_divisor(n: int, candidates) -> int:
    return next(c for c in candidates if n % c == 0)


def schedule_cpu(sch, func_name, target) -> None:
    if func_name is not None:
        sch.work_on(func_name)
    pad = sch.get_sblock(PAD_BLOCK, func_name)
    vblk = sch.get_sblock(V_BLOCK, func_name)
    gemm = sch.get_sblock(GEMM_BLOCK, func_name)
    out = sch.get_sblock(OUTPUT_BLOCK, func_name)

    # padding + channel blocking: one parallel pass, vectorized over the channel lanes
    pn, pc, py, _, pl = sch.get_loops(pad)
    sch.parallel(sch.fuse(pn, pc, py))
    sch.vectorize(pl)

    # input transform: per (tile, channel block), all alpha^2 positions unrolled, ob channels a vector
    xi, nu, n, ty, tx, c = sch.get_loops(vblk)
    ob = loop_extent(sch, sch.get_loops(pad)[-1])
    m = loop_extent(sch, xi) - 2
    cb, cl = sch.split(c, [None, ob])
    sch.reorder(n, ty, tx, cb, xi, nu, cl)
    sch.parallel(sch.fuse(n, ty, tx, cb))
    sch.unroll(xi)
    sch.unroll(nu)
    sch.vectorize(cl)

    # batched GEMM: register tile ot blocks of ob output channels x tt tiles, reduction over channels
    xi, nu, b, t, ol, rc = sch.get_loops(gemm)
    # tunable: ot and tt are samples around the default (both split exactly)
    blocks, tiles = loop_extent(sch, b), loop_extent(sch, t)
    ot = 2 if blocks % 2 == 0 else 1
    tt = _largest_divisor(tiles, (6, 5, 4, 3, 2, 1))
    bo, bi = sch.split(b, [None, sample(sch, tiling.divisor_tiles(blocks, 2, ot), ot)])
    to, ti = sch.split(t, [None, sample(sch, tiling.divisor_tiles(tiles, 8, tt), tt)])
    sch.reorder(xi, nu, bo, to, rc, ti, bi, ol)
    task = sch.fuse(xi, nu, bo)
    sch.parallel(task)
    acc = sch.cache_write(gemm, 0, "global")
    sch.reverse_compute_at(acc, to, preserve_unit_loops=True)
    sch.unroll(bi)
    sch.unroll(ti)
    sch.vectorize(ol)
    sch.decompose_reduction(gemm, rc)
    # the next task's weight slab prefetched over this task's tile groups (prefetch.py)
    update = sch.get(gemm)  # reads its accumulator, V and the weight U
    written = {w.source.name for w in update.writes}
    weight = next(r.source.name for r in update.reads if r.source.name not in written and r.source.name != V_BLOCK)
    prefetch.annotate_next_task(sch, rc, weight, task, to, bi, ol, ti)
    aloops = sch.get_loops(acc)
    sch.vectorize(aloops[-1])

    # output transform + epilogue: per tile, (r, s) unrolled, ob output channels a vector
    n, o, y, x, *lane = sch.get_loops(out)
    if lane:  # a blocked output: its channel block is the vector
        oo, oi, whole_blocks = o, lane[0], True
    else:
        whole_blocks = loop_extent(sch, o) % ob == 0
        oo, oi = sch.split(o, [None, ob])
    yo, yi = sch.split(y, [None, m])
    xo, xi_ = sch.split(x, [None, m])
    sch.reorder(n, oo, yo, xo, yi, xi_, oi)
    sch.parallel(sch.fuse(n, oo, yo))
    sch.unroll(yi)
    sch.unroll(xi_)
    if whole_blocks:
        sch.vectorize(oi)


def _variant(name: str) -> Lowering:
    bind = functools.partial
    return Lowering(name, bind(supports, variant=name), bind(workspace_bytes, variant=name),
                    bind(prepare_weight, variant=name), bind(compute, variant=name), schedule_cpu,
                    blocked_io=lambda spec, lanes: True,  # channel-blocked padding stage, GEMM and output stage
                    weight_channel_axis=3)  # U = G g G^T as [alpha, alpha, Op/ob, Cp, ob]


WINOGRAD2 = _variant("winograd2")  # F(2x2, 3x3)
WINOGRAD4 = _variant("winograd4")  # F(4x4, 3x3)
