"""The cost of each conv lowering as sympy formulas in the conv's shape.

Symbols: batch N, channels C -> O in G groups, input H x W, kernel KH x KW, stride SH SW, padding
PH PW (each side), dilation DH DW, SIMD lanes VL. Output OH = floor((H + 2PH - DH(KH-1) - 1)/SH) + 1,
likewise OW.

Every lowering has the same terms (zero where they don't apply), all counted as executed, i.e. with
the padding of vector blocks and tiles:

    flops         multiply-adds x 2 of the main loop when it is vectorized over >= VL/2 lanes of channels
    narrow_flops  the same when it isn't (depthwise and narrow groups vectorize over output columns)
    aux_flops     flops outside the main loop (Winograd and FFT transforms)
    bytes         memory traffic: input, weights, output, and workspace written then read
    workspace     bytes of intermediate buffers (equal to the lowering module's workspace_bytes)

The model (model.py) turns the terms into seconds with a machine profile: flops over peak FLOP/s and
bytes over bandwidth, each scaled by an efficiency factor calibrated per lowering.
"""

from __future__ import annotations

from functools import lru_cache

import sympy as sp

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

TERMS = ("flops", "narrow_flops", "aux_flops", "bytes", "workspace")

_io_bytes = F32 * (N * C * H * W + O * CG * KH * KW + N * O * OH * OW)
_padded_input = sp.Piecewise((0, sp.Eq(PH + PW, 0)), (F32 * N * C * HP * WP, True))
_direct_macs = N * O * OH * OW * CG * KH * KW


def _wide(expr):
    """expr when the output channels per group fill half a vector (vectorized over channels), else 0."""
    return sp.Piecewise((expr, OG >= VL / 2), (0, True))


def _narrow(expr):
    return sp.Piecewise((0, OG >= VL / 2), (expr, True))


def _direct():
    block = sp.Min(VL, OG)
    padded_out = G * sp.ceiling(OG / block) * block  # output channels rounded up to whole blocks
    macs = N * padded_out * OH * OW * CG * KH * KW
    return {"flops": _wide(2 * macs), "narrow_flops": _narrow(2 * macs), "aux_flops": 0,
            "bytes": _io_bytes + 2 * _padded_input, "workspace": _padded_input}


def _im2col():
    is_pointwise = sp.And(sp.Eq(KH * KW, 1), sp.Eq(SH * SW, 1), sp.Eq(PH + PW, 0))
    matrix = sp.Piecewise((0, is_pointwise), (F32 * N * C * KH * KW * OH * OW, True))
    workspace = sp.Piecewise((0, is_pointwise), (matrix + _padded_input, True))
    return {"flops": _wide(2 * _direct_macs), "narrow_flops": _narrow(2 * _direct_macs), "aux_flops": 0,
            "bytes": _io_bytes + 2 * workspace, "workspace": workspace}


def _im2win():
    window = F32 * N * C * OH * WP * KH
    return {"flops": _wide(2 * _direct_macs), "narrow_flops": _narrow(2 * _direct_macs), "aux_flops": 0,
            "bytes": _io_bytes + 2 * (window + _padded_input), "workspace": window + _padded_input}


def _winograd(m: int):
    alpha = m + 2
    tiles = N * sp.ceiling(OH / m) * sp.ceiling(OW / m)
    padded = F32 * N * C * (sp.ceiling(OH / m) * m + 2) * (sp.ceiling(OW / m) * m + 2)
    v_bytes = F32 * alpha**2 * C * tiles
    m_bytes = F32 * alpha**2 * O * tiles
    gemm = 2 * alpha**2 * tiles * C * O
    # B^T d B and A^T M A as separable 1-D transforms (2 alpha^3 per input tile, 2 m alpha (alpha + m) per output)
    transforms = tiles * (C * 2 * 2 * alpha**3 + O * 2 * m * alpha * (alpha + m))
    workspace = padded + v_bytes + m_bytes
    return {"flops": gemm, "narrow_flops": 0, "aux_flops": transforms, "bytes": _io_bytes + 2 * workspace,
            "workspace": workspace}


def _fft():
    # DFT as matrix products on an LH x LW grid (fft_conv.py): forward over W then H, a complex
    # product (summed over the group's channels), inverse over H then W for the kept outputs only.
    LH = sp.ceiling((HP + SH - 1) / 8) * 8
    LW = sp.ceiling((WP + SW - 1) / 8) * 8
    forward = N * C * (2 * 2 * HP * WP * LW + 4 * 2 * LH * HP * LW)
    product = 4 * 2 * N * O * CG * LH * LW
    inverse = N * O * (4 * 2 * OH * LH * LW + 2 * 2 * OH * LW * OW)
    spectra = F32 * 2 * N * (C * (HP * LW + LH * LW) + O * (LH * LW + OH * LW))
    workspace = spectra + _padded_input
    return {"flops": product, "narrow_flops": 0, "aux_flops": forward + inverse, "bytes": _io_bytes + 2 * workspace,
            "workspace": workspace}


FORMULAS: dict[str, dict[str, sp.Expr]] = {
    "direct": _direct(),
    "im2col": _im2col(),
    "im2win": _im2win(),
    "winograd2": _winograd(2),
    "winograd4": _winograd(4),
    "fft": _fft(),
}


def substitutions(spec: ConvSpec, lanes: int) -> tuple:
    return (spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.groups,
            spec.kernel[0], spec.kernel[1], spec.stride[0], spec.stride[1], spec.padding[0], spec.padding[1],
            spec.dilation[0], spec.dilation[1], lanes)


@lru_cache(maxsize=None)
def _compiled(lowering: str, term: str):
    expr = sp.sympify(FORMULAS[lowering][term])
    return sp.lambdify(SYMBOLS, expr, modules=[{"ceiling": _ceil, "floor": _floor}, "math"])


def _ceil(x):
    import math

    return math.ceil(x)


def _floor(x):
    import math

    return math.floor(x)


def evaluate(lowering: str, spec: ConvSpec, lanes: int = 8) -> dict[str, float]:
    """Every term of ``lowering`` for ``spec`` as numbers."""
    values = substitutions(spec, lanes)
    return {term: float(_compiled(lowering, term)(*values)) for term in TERMS}
