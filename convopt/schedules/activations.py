"""The activations a kernel's epilogue applies (conv and dense kernels), as scalar TIR expressions.

The transcendental ones are written with polynomials and one division, which LLVM vectorizes (libm's expf
/ erff / tanhf are scalar calls), accurate to a few float32 ulps:

    sigmoid(x) = 1 / (1 + 2^(-x log2 e));  silu(x) = x / (1 + 2^(-x log2 e))
    gelu_tanh(x) = x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))
    gelu(x) = x (1/2 + (Phi(x) - 1/2)),  Phi(x) - 1/2 = erf(x / sqrt 2) / 2 = x P(x^2) / Q(x^2), a 5/5 fit
    hardswish(x) x min(max(x + 3, 0), 6) / 6;  hardsigmoid(x) = min(max(x / 6 + 1/2, 0), 1)
    leaky_relu:a x if x > 0 else a x (a parameter in the name, e.g. "leaky_relu:0.1"; NaN stays NaN)

``exp2`` rounds y with a magic-number sum instead of round and convert instructions, takes 2^n from the sum's
bits and 2^f, |f| <= 1/2, from a degree-5 polynomial; its clamp of y to [-127, 128] makes 2^y exactly +0
or +inf beyond float32's range, so sigmoid and silu saturate exactly (silu(-1e30) is -0, silu(1e30) is 1e30)
and sigmoid stays in [0, 1] with no clamp on the output. These kernels are bound by the throughput of the
FP pipes (the division is not the limit: SiLU with a multiply in its place is 4% faster), so the count of
vector operations is the cost, the multiplies and FMAs most (two of the four FP pipes): 14 for SiLU
this way, 7 of them multiplies or FMAs (13 and 7 since session 55: ``exp2_of_product`` folds -x log2 e into
the FMAs that use it), against 15 and 11 as the odd rational x (1/2 + tanh(x / 2) / 2) with a
4/4 fit of tanh used until session 45 (clamp, x^2, two Horner chains, division, 1/2 + r, times x). Four
independent SiLUs a 16-lane vector of L1-resident floats, one Zen 5 core: 1.85 ns an application the
rational way, 1.52 this way (one SiLU a vector: 1.58, 1.53, and 1.63 with vrndscaleps and vcvttps2dq
rounding instead of the magic sum).

GELU keeps its rational form: an exp-based erf (Abramowitz & Stegun 7.1.26) needs the exp and a division on
top of a polynomial of the same length. Its input is clamped to +-L, L the first float32 at which the
kernel's own evaluation of Phi(x) - 1/2 (Horner with FMAs) gives exactly 1/2, and its numerator scaled by a
margin 1 - m so that no float32 below L gives more: gelu saturates exactly (gelu(-1e30) is -0) without the
two min/max of an output clamp. tests/schedules/test_activations.py checks every float32 below L.

The one division stays in each: a reciprocal from the exponent trick with three Newton steps (seven vector
ops, no division) made SiLU 41 us and GELU 46 us over 2^18 floats on one Zen 5 core, against 28 and 33 us
with the division (session 39). On an Intel AVX-512 core (session 55) a lone SiLU stream is bound by the
divider instead (vdivps zmm: one each 10 cycles; 12.3 us over 2^16 floats, 9.4 with a multiply in its
place), but inside a conv's epilogue the divider runs beside the FMA pipes and the operation count is the
cost again (16 -> 96 1x1 at 112 px with SiLU 302 us, with ReLU 157). LLVM's rcp14 + Newton form of a
division needs fast-math's approximate-functions flag, which TVM sets only with all of fast-math (whose
reassociation cancels exp2's rounding sum).

NaN stays NaN through the smooth ones (their factor x, and the clamps keep it); relu, relu6 and the hard ones
are max/min, whose NaN behaviour is LLVM's select on an ordered compare (NaN becomes the bound). The IR ops
they stand for are in ``ACTIVATION_OPS`` (``activation_of`` says which a node is).
"""

from __future__ import annotations

import math

from tvm import tirx

from ..ir.ops import Op

F32 = "float32"


def _c(v: float):
    return tirx.const(v, F32)


def let(value, body):
    """``body(v)`` with ``v`` bound to ``value`` once. An activation reads its input several times (GELU's x
    and x^2 in both polynomials), and an epilogue's input is an expression (a
    Winograd output transform sums 36 loads): without the binding the copies made compiling a model take
    minutes. Only this outermost binding: nested Lets break TVM's vectorizer ("Let cannot bind the same
    var to two different values") when it scalarizes a guarded tail."""
    var = tirx.Var("v", F32)  # every activation computes in float32
    return tirx.Let(var, value, body(var))


def _clamp_keeping_nan(x, lo: float, hi: float):
    # the constant first: TVM emits max(a, b) as select(a > b, a, b), which keeps a NaN in b (isnan would be
    # scalarized)
    return tirx.min(_c(hi), tirx.max(_c(lo), x))


# erf(x) = x P(x^2) / Q(x^2) on |x| <= 4 (beyond, erf(x) rounds to +-1 in float32): a rational fit of
# degrees 5/5 in x^2, fitted by iteratively reweighted least squares on 6000 points of [0, 4] for the
# smallest relative error (benchmarks/fit_activations.py; evaluated in float32: at most 3.7e-7 over [0, 4]). Eleven FMAs and one division;
# Abramowitz & Stegun 7.1.26, used before, needs the division and an exp as well: GELU over 2^20 floats on
# one Zen 4 core took 602 us that way, 345 us this way (a copy alone: 110 us).
_ERF_P = (1.1283791500897815, 0.18992055420133452, 0.0526671339021583, 0.0037416445250189794,
          0.0002837403468721606, 2.044472525297725e-06)
_ERF_Q = (1.0, 0.501645543473952, 0.11389288409455577, 0.014919649823926715, 0.0011557395743741032,
          3.797749897781936e-05)


def _polynomial(coefficients, t):
    value = _c(coefficients[-1])
    for coefficient in coefficients[-2::-1]:
        value = value * t + _c(coefficient)
    return value


# erf(x / sqrt 2) / 2 = x P'(x^2) / Q'(x^2): P'_i = P_i / (2 sqrt(2) 2^i), Q'_i = Q_i / 2^i
_CDF_MARGIN = 3e-7
_CDF_P = tuple((1 - _CDF_MARGIN) * p / (2 * math.sqrt(2) * 2 ** i) for i, p in enumerate(_ERF_P))
_CDF_Q = tuple(q / 2 ** i for i, q in enumerate(_ERF_Q))
CDF_LIMIT = 5.59772253036499  # first float32 where the kernels' Phi(x) - 1/2 is exactly 1/2 (~ 3.96 sqrt 2)


def centred_normal_cdf(x):
    """Phi(x) - 1/2 = erf(x / sqrt 2) / 2, in [-1/2, 1/2], exactly +-1/2 for |x| >= ``CDF_LIMIT``; |error| <= 2.9e-7."""
    a = _clamp_keeping_nan(x, -CDF_LIMIT, CDF_LIMIT)
    t = a * a
    return a * _polynomial(_CDF_P, t) / _polynomial(_CDF_Q, t)


# 2^f on |f| <= 1/2: a degree-5 polynomial with 2^0 = 1 exactly, fitted for the smallest relative error
# (benchmarks/fit_activations.py; evaluated in float32 by Horner: at most 1.8e-7)
_EXP2 = (1.0, 0.6931469776356985, 0.24022242179403502, 0.05550733753842366, 0.009671506585869051,
         0.0013264699783602958)
# y + 1.5 * 2^23 + 127 lies in [2^23, 2^24), where float32's spacing is 1: the sum is y rounded to an integer n
# (to nearest, even on ties), and its mantissa's low bits hold n + 127
_ROUNDING_MAGIC = 1.5 * 2 ** 23 + 127


def exp2(y):
    """2^y for every float32 y: +inf above 127.5, +0 from -126.5 down, NaN for NaN, 2^n exactly at integers;
    relative error <= 1.8e-7 in between where 2^y is a normal float (below 2^-126, subnormal, with less
    precision)."""
    return exp2_of_product(y, 1.0)


# module constant, read at build time: False computes 2^(s x) as exp2(s x), the product rounded first
# (benchmarks/constant_ab.py compares builds)
FOLD_PRODUCT = True


def exp2_of_product(x, scale: float):
    """2^(scale x) as ``exp2`` computes 2^y, with the product folded into the two FMAs that use it: the
    rounding sum (scale x + magic) and the reduced argument (scale x - n, one rounding: more accurate than
    scale x rounded first where |scale x| is large). The clamp moves to x (the x whose products span
    [-127, 128], a float32 rounding off at most, which still rounds to n in [-127, 128]): a multiply fewer."""
    if not FOLD_PRODUCT and scale != 1.0:
        return exp2_of_product(x * _c(scale), 1.0)
    lo, hi = sorted((-127.0 / scale, 128.0 / scale))
    x = _clamp_keeping_nan(x, lo, hi)  # n + 127 in [0, 255]: 0 is the exponent field of +0, 255 of +inf
    product = x if scale == 1.0 else x * _c(scale)
    bits = tirx.reinterpret("int32", product + _c(_ROUNDING_MAGIC))
    # round(scale x), exact, and scale x - n in [-1/2, 1/2]; through the bits, or TVM's simplifier cancels the
    # two magic numbers
    n = tirx.reinterpret(F32, bits) - _c(_ROUNDING_MAGIC)
    two_to_n = tirx.reinterpret(F32, tirx.shift_left(bits, tirx.const(23, "int32")))
    return _polynomial(_EXP2, product - n) * two_to_n


_MINUS_LOG2_E = -1 / math.log(2)


def sigmoid(x):  # 1 / (1 + e^-x): in [0, 1], 0 where e^-x overflows and 1 where it underflows
    return _c(1.0) / (_c(1.0) + exp2_of_product(x, _MINUS_LOG2_E))


def silu(x):  # x / (1 + e^-x): exactly -0 where e^-x overflows, x where it underflows; NaN stays NaN
    return x / (_c(1.0) + exp2_of_product(x, _MINUS_LOG2_E))


def gelu(x):  # x Phi(x)
    return x * (_c(0.5) + centred_normal_cdf(x))


def _clamp(x, lo: float, hi: float):
    return tirx.min(tirx.max(x, _c(lo)), _c(hi))


ACTIVATIONS = {
    "none": lambda x: x,
    "relu": lambda x: tirx.max(x, _c(0.0)),
    "relu6": lambda x: _clamp(x, 0.0, 6.0),
    "sigmoid": sigmoid,
    "silu": silu,
    "gelu": gelu,
    "gelu_tanh": lambda x: x * sigmoid(_c(2 * math.sqrt(2 / math.pi)) * (x + _c(0.044715) * x * x * x)),
    # times 1/6 rather than / 6 (within an ulp): a vector division has a fraction of an FMA's throughput, and
    # LLVM keeps the division without fast-math (hardswish over 2^18 floats, one Intel core: 47 -> 37 us, as ReLU)
    "hardswish": lambda x: x * _clamp(x + _c(3.0), 0.0, 6.0) * _c(1 / 6),
    "hardsigmoid": lambda x: _clamp(x * _c(1 / 6) + _c(0.5), 0.0, 1.0),
}


# activations with one float parameter, written "name:value"
PARAMETRIC_ACTIVATIONS = {
    "leaky_relu": lambda x, slope: tirx.if_then_else(x > _c(0.0), x, x * _c(slope)),
}


def activate(value, activation: str):
    """``value`` through ``activation`` (a name of ``ACTIVATIONS``, or "name:parameter" of
    ``PARAMETRIC_ACTIVATIONS``), ``value`` evaluated once."""
    name, _, parameter = activation.partition(":")
    if name in PARAMETRIC_ACTIVATIONS and parameter:
        return let(value, lambda x: PARAMETRIC_ACTIVATIONS[name](x, float(parameter)))
    if activation not in ACTIVATIONS:
        known = list(ACTIVATIONS) + [f"{k}:<value>" for k in PARAMETRIC_ACTIVATIONS]
        raise ValueError(f"activation must be one of {known}, got {activation!r}")
    if activation == "none":
        return value
    return let(value, ACTIVATIONS[activation])


# IR op -> the activation (a name of ACTIVATIONS) it is, given the node; None: not one
ACTIVATION_OPS = {
    Op.RELU: lambda n: "relu",
    Op.CLAMP: lambda n: "relu6" if (n.attrs.min, n.attrs.max) == (0.0, 6.0) else None,
    Op.SIGMOID: lambda n: "sigmoid",
    Op.SILU: lambda n: "silu",
    Op.GELU: lambda n: {"none": "gelu", "tanh": "gelu_tanh"}.get(n.attrs.approximate),
    Op.HARDSWISH: lambda n: "hardswish",
    Op.HARDSIGMOID: lambda n: "hardsigmoid",
    Op.TORCH: lambda n: _leaky_relu(n) if n.attrs.target == "aten.leaky_relu.default" else None,
}


def _leaky_relu(n) -> str:
    slope = n.attrs.args[1] if len(n.attrs.args) > 1 else 0.01  # leaky_relu(input, negative_slope=0.01)
    return f"leaky_relu:{float(slope)!r}"


def activation_of(node) -> str | None:
    """The epilogue activation IR node ``node`` computes (a name ``activate`` takes), or None."""
    rule = ACTIVATION_OPS.get(node.op)
    if rule is None or getattr(node.type, "dtype", None) != "f32":  # a tuple-valued opaque op has no dtype
        return None
    return rule(node)
