"""The cost of each conv lowering as sympy formulas in the conv's shape.

Symbols: batch N, channels C -> O in G groups, input H x W, kernel KH x KW, stride SH SW, padding
PH PW (each side), dilation DH DW, SIMD lanes VL. Output OH = floor((H + 2PH - DH(KH-1) - 1)/SH) + 1,
likewise OW.

Every lowering has the same terms (zero where they don't apply), all counted as executed, i.e. with
the padding of vector blocks and tiles:

    flops         multiply-adds x 2 of the main loop when it is vectorized over >= VL/2 lanes of channels
    narrow_flops  the same when it isn't (depthwise and narrow groups vectorize over output columns)
    slow_flops    the same in a configuration the lowering's schedule runs slowly: a partial register
                  tile (im2col on 7x7 maps), strided input reads inside the register tile (direct, stride > 1),
                  a window gathered with a column stride (im2win, stride > 1)
    aux_flops     flops outside the main loop (Winograd and FFT transforms)
    bytes         memory traffic: input, weights, output, and workspace written then read
    outputs       output elements (the epilogue: bias, residual, activation, the store)
    copied        workspace elements written (padding, unrolling, repacking, transforms: often gathers,
                  bound by instructions rather than bandwidth)
    workspace     bytes of intermediate buffers (equal to the lowering module's workspace_bytes)
    weights       bytes of the lowering's packed weights, read on every call (Winograd's U: alpha^2 / 9
                  times the conv's; FFT's spectrum): what a call reads from memory when the model's weights
                  don't stay in the last-level cache between runs (model.weight_stream_seconds)

The model (model.py) turns the terms into seconds with a machine profile: flops over peak FLOP/s and
bytes over bandwidth, each scaled by an efficiency factor calibrated per lowering.
"""

from __future__ import annotations

import math
from functools import lru_cache

import sympy as sp

from ..schedules import fft_conv, tiling
from ..schedules.conv_spec import ConvSpec

N, C, H, W, O, G = sp.symbols("N C H W O G", positive=True, integer=True)
KH, KW, SH, SW, DH, DW = sp.symbols("KH KW SH SW DH DW", positive=True, integer=True)
PH, PW = sp.symbols("PH PW", nonnegative=True, integer=True)
VL = sp.Symbol("VL", positive=True, integer=True)
SYMBOLS = (N, C, H, W, O, G, KH, KW, SH, SW, PH, PW, DH, DW, VL)

OH = sp.floor((H + 2 * PH - DH * (KH - 1) - 1) / SH) + 1
OW = sp.floor((W + 2 * PW - DW * (KW - 1) - 1) / SW) + 1
CG, OG = C / G, O / G  # channels per group
HP, WP = H + 2 * PH, W + 2 * PW
F32 = 4

TERMS = ("flops", "narrow_flops", "slow_flops", "aux_flops", "bytes", "outputs", "copied", "workspace", "weights")

_io_bytes = F32 * (N * C * H * W + O * CG * KH * KW + N * O * OH * OW)
_padded_input = sp.Piecewise((0, sp.Eq(PH + PW, 0)), (F32 * N * C * HP * WP, True))
_direct_macs = N * O * OH * OW * CG * KH * KW


def _wide(expr):
    """expr when the output channels per group fill half a vector (vectorized over channels), else 0."""
    return sp.Piecewise((expr, OG >= VL / 2), (0, True))


def _narrow(expr):
    return sp.Piecewise((0, OG >= VL / 2), (expr, True))


class DirectColumnTile(sp.Function):
    """Output columns per register tile of the direct kernel's channel-vectorized mode
    (tiling.column_tile: output width, channel blocks, block, lanes)."""

    @classmethod
    def eval(cls, ow, blocks, block, vl):
        if all(v.is_Integer for v in (ow, blocks, block, vl)):
            return sp.Integer(tiling.column_tile(int(ow), int(blocks), int(block), int(vl)))
        return None


class OutputBlocks(sp.Function):
    """Output-channel blocks the direct and im2win kernels compute, zero blocks included
    (tiling.output_blocks: groups, channels per group, lanes, output width)."""

    @classmethod
    def eval(cls, g, og, vl, ow):
        if all(v.is_Integer for v in (g, og, vl, ow)):
            return sp.Integer(tiling.output_blocks(int(g), int(og), int(vl), int(ow)))
        return None


class PairedGroups(sp.Function):
    """1 where the direct kernel computes two groups a vector over an interleaved copy of its input
    (tiling.paired_groups: groups, channels in, out, lanes), else 0."""

    @classmethod
    def eval(cls, g, c, o, vl):
        if all(v.is_Integer for v in (g, c, o, vl)):
            return sp.Integer(int(tiling.paired_groups(int(g), int(c), int(o), int(vl))))
        return None


def _direct():
    block = sp.Min(VL, OG)
    blocks = OutputBlocks(G, OG, VL, OW)
    padded_out = blocks * block  # output channels rounded up to whole blocks, and any zero block
    macs = N * padded_out * OH * OW * CG * KH * KW
    tiled = macs * _round_up(OW, DirectColumnTile(OW, blocks, block, VL)) / OW  # the last column tile runs whole
    strided = sp.Or(SH > 1, SW > 1)
    # vectorized over columns with a column stride: the padded input is stored as SW column phases
    phased = sp.And(SW > 1, block < sp.Max(4, VL / 2))
    workspace = sp.Piecewise((F32 * N * C * HP * SW * sp.ceiling(WP / SW), phased),
                             (F32 * N * C * HP * WP, sp.Eq(PairedGroups(G, C, O, VL), 1)),  # the interleaved copy
                             (_padded_input, True))
    return {"flops": _wide(sp.Piecewise((0, strided), (2 * tiled, True))), "narrow_flops": _narrow(2 * macs),
            "slow_flops": _wide(sp.Piecewise((2 * tiled, strided), (0, True))), "aux_flops": 0,
            "bytes": _io_bytes + 2 * workspace, "workspace": workspace}


class Im2colAccumulators(sp.Function):
    """Vector accumulators in im2col's GEMM register tile (tiling.gemm_accumulators: pixels, Og, O, lanes)."""

    @classmethod
    def eval(cls, p, og, o, vl):
        if all(v.is_Integer for v in (p, og, o, vl)):
            return sp.Float(tiling.gemm_accumulators(int(p), int(og), int(o), int(vl)))
        return None


def _im2col():
    is_pointwise = sp.And(sp.Eq(KH * KW, 1), sp.Eq(SH * SW, 1), sp.Eq(PH + PW, 0))
    matrix = sp.Piecewise((0, is_pointwise), (F32 * N * C * KH * KW * OH * OW, True))
    workspace = sp.Piecewise((0, is_pointwise), (matrix + _padded_input, True))
    # a full register tile (>= 6 of 8 accumulators) and whole channel vectors run at GEMM speed; narrower
    # tiles (7x7 maps: 49 pixels, tile of 2 x 1) and depthwise (tiny per-group GEMMs) do not
    full = Im2colAccumulators(OH * OW, OG, O, VL) >= 6 * VL / 8  # 6 of 8 accumulators with AVX2, 12 of 16
    macs = 2 * _direct_macs
    return {"flops": _wide(sp.Piecewise((macs, full), (0, True))), "narrow_flops": _narrow(macs),
            "slow_flops": _wide(sp.Piecewise((0, full), (macs, True))), "aux_flops": 0,
            "bytes": _io_bytes + 2 * workspace, "workspace": workspace}


def _im2win():
    copies_input = sp.And(sp.Eq(KH, 1), sp.Eq(SH, 1), sp.Eq(PH + PW, 0))  # the window buffer is the input
    window = sp.Piecewise((0, copies_input), (F32 * N * C * OH * WP * KH, True))
    # a zero block of output channels (tiling.output_blocks) runs like a real one
    macs = _direct_macs * OutputBlocks(G, OG, VL, OW) / (G * sp.ceiling(OG / sp.Min(VL, OG)))
    # strided: each window row gathers every SW-th input column (measured 1.0-1.6x direct's time on the Intel
    # AVX-512 host where the plain rate called them level; level on the AMD hosts, whose profiles give the
    # term the plain rate)
    strided = sp.Or(SH > 1, SW > 1)
    return {"flops": _wide(sp.Piecewise((0, strided), (2 * macs, True))), "narrow_flops": _narrow(2 * _direct_macs),
            "slow_flops": _wide(sp.Piecewise((2 * macs, strided), (0, True))), "aux_flops": 0,
            "bytes": _io_bytes + 2 * window, "workspace": window}


class WinogradTileWidth(sp.Function):
    """The batched GEMM's register-tile width over tiles (tiling.winograd_tile_width: 6, 5 or 4)."""

    @classmethod
    def eval(cls, tiles):
        if tiles.is_Integer:
            return sp.Integer(tiling.winograd_tile_width(int(tiles)))
        return None


class FftWidth(sp.Function):
    """Columns per vector of the FFT's spectrum grid (fft_conv.vector_width: the lanes, at least 8)."""

    @classmethod
    def eval(cls, vl):
        if vl.is_Integer:
            return sp.Integer(fft_conv.vector_width(int(vl)))
        return None


class FftVectors(sp.Function):
    """Vectors of the FFT's column spectrum for a grid of at least n + 1 columns (fft_conv.column_vectors)."""

    @classmethod
    def eval(cls, n, width):
        if n.is_Integer and width.is_Integer:
            return sp.Integer(fft_conv.column_vectors(int(n), int(width)))
        return None


def _round_up(x, m):
    return sp.ceiling(x / m) * m


def _winograd(m: int):
    alpha = m + 2
    tiles = N * sp.ceiling(OH / m) * sp.ceiling(OW / m)
    tiles_padded = _round_up(tiles, WinogradTileWidth(tiles))  # the GEMM runs whole register tiles
    cp, op = _round_up(C, VL), _round_up(O, VL)  # channels in whole vectors
    padded = F32 * N * cp * (sp.ceiling(OH / m) * m + 2) * (sp.ceiling(OW / m) * m + 2)
    workspace = padded + F32 * alpha**2 * (tiles * cp + op * tiles_padded)
    gemm = 2 * alpha**2 * tiles_padded * cp * op
    # B^T d B and A^T M A as separable 1-D transforms (2 alpha^3 per input tile, 2 m alpha (alpha + m) per output)
    transforms = tiles * (cp * 2 * 2 * alpha**3 + op * 2 * m * alpha * (alpha + m))
    weights = F32 * alpha**2 * cp * op  # U, read on every call, alpha^2 / 9 times the conv's weight
    return {"flops": gemm, "narrow_flops": 0, "aux_flops": transforms,
            "bytes": _io_bytes - F32 * O * CG * KH * KW + weights + 2 * workspace, "workspace": workspace,
            "weights": weights}


def _fft():
    # DFT as matrix products (fft_conv.py): only the He x We input rows/cols that reach an output; a grid of
    # He + PH rows (half spectrum Kh) and J = 2Kw columns in whole vectors; inverse for kept outputs only.
    he = sp.Min(H, (OH - 1) * SH + DH * (KH - 1) - PH + 1)
    we = sp.Min(W, (OW - 1) * SW + DW * (KW - 1) - PW + 1)
    kh = sp.floor((he + PH) / 2) + 1
    width = FftWidth(VL)
    j = width * FftVectors(we + PW, width)
    owp = _round_up(OW, width)
    per_channel = sp.And(sp.Eq(CG, 1), sp.Eq(OG, 1))
    live = sp.Piecewise((1, per_channel), (N * C, True))  # depthwise: one channel's buffers per thread
    forward = N * C * (he * we * j + 2 * kh * he * j)
    product = 4 * N * O * CG * 2 * kh * j
    inverse = N * O * (OH * 2 * kh * j + OH * j * owp)
    workspace = F32 * ((he + 2 * kh) * j * live + (2 * kh + OH) * j)
    spectra = F32 * N * (C * (he + 2 * kh) * j + O * (2 * kh + OH) * j)  # traffic: every channel's buffers
    weights = F32 * O * CG * 4 * kh * j / 2  # the kernel's spectrum Q, read on every call
    return {"flops": 2 * (forward + inverse), "narrow_flops": 0, "aux_flops": 2 * product,
            "bytes": _io_bytes - F32 * O * CG * KH * KW + weights + 2 * spectra, "workspace": workspace,
            "weights": weights}


def _depthwise():
    # channels vectorized in blocks of VL (depthwise.py): every tap a full vector over the padded channel count
    cp = _round_up(C, VL)
    workspace = F32 * N * cp * HP * WP
    return {"flops": 2 * N * cp * OH * OW * KH * KW, "narrow_flops": 0, "aux_flops": 0,
            "bytes": _io_bytes + 2 * workspace, "workspace": workspace}


FORMULAS: dict[str, dict[str, sp.Expr]] = {
    name: {"slow_flops": 0, "weights": F32 * O * CG * KH * KW, **terms, "outputs": N * O * OH * OW,
           "copied": terms["workspace"] / F32}
    for name, terms in {
        "direct": _direct(),
        "im2col": _im2col(),
        "im2win": _im2win(),
        "winograd2": _winograd(2),
        "winograd4": _winograd(4),
        "fft": _fft(),
        "depthwise": _depthwise(),
    }.items()
}


def substitutions(spec: ConvSpec, lanes: int) -> tuple:
    return (spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.groups,
            spec.kernel[0], spec.kernel[1], spec.stride[0], spec.stride[1], spec.padding[0], spec.padding[1],
            spec.dilation[0], spec.dilation[1], lanes)


# the schedule's own rules, as plain functions of numbers, for the lambdified formulas
_RULES = {
    "DirectColumnTile": lambda ow, blocks, block, vl: tiling.column_tile(round(ow), round(blocks), round(block),
                                                                         round(vl)),
    "OutputBlocks": lambda g, og, vl, ow: tiling.output_blocks(round(g), round(og), round(vl), round(ow)),
    "PairedGroups": lambda g, c, o, vl: int(tiling.paired_groups(round(g), round(c), round(o), round(vl))),
    "Im2colAccumulators": lambda p, og, o, vl: tiling.gemm_accumulators(round(p), round(og), round(o), round(vl)),
    "WinogradTileWidth": lambda tiles: tiling.winograd_tile_width(round(tiles)),
    "FftWidth": lambda vl: fft_conv.vector_width(round(vl)),
    "FftVectors": lambda n, width: fft_conv.column_vectors(round(n), round(width)),
}


@lru_cache(maxsize=None)  # lambdify once per (lowering, term)
def _compiled(lowering: str, term: str):
    expr = sp.sympify(FORMULAS[lowering][term])
    return sp.lambdify(SYMBOLS, expr, modules=[{"ceiling": math.ceil, "floor": math.floor, "Min": min, "Max": max, **_RULES},
                                               "math"])


def evaluate(lowering: str, spec: ConvSpec, lanes: int) -> dict[str, float]:
    """Every term of ``lowering`` for ``spec`` as numbers."""
    values = substitutions(spec, lanes)
    return {term: float(_compiled(lowering, term)(*values)) for term in TERMS}
