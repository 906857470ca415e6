"""The activations a kernel's epilogue applies (conv and dense kernels), as scalar TIR expressions.

The transcendental ones are written as rational functions that LLVM vectorizes (libm's expf / erff / tanhf
are scalar calls), accurate to a few float32 ulps in the range that matters, with no exp (an exp polynomial
with its range reduction cost as much as the rest of SiLU). Each smooth gate is one odd rational function of
x, its centred form, so that the activation is x (1/2 + r(x)) with no clamp on its output:

    sigmoid(x) - 1/2 = tanh(x / 2) / 2      x P(x^2) / Q(x^2), from a 4/4 fit of tanh on |x| <= 9
    Phi(x) - 1/2     = erf(x / sqrt 2) / 2  x P(x^2) / Q(x^2), from a 5/5 fit of erf on |x| <= 4
    silu(x) = x (1/2 + (sigmoid(x) - 1/2));  gelu(x) = x (1/2 + (Phi(x) - 1/2));  sigmoid(x) = 1/2 + ...
    gelu_tanh(x) = x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))
    hardswish(x) x min(max(x + 3, 0), 6) / 6;  hardsigmoid(x) = min(max(x / 6 + 1/2, 0), 1)
    leaky_relu:a x if x > 0 else a x (a parameter in the name, e.g. "leaky_relu:0.1"; NaN stays NaN)

A centred gate's input is clamped to +-L, where L is the first float32 at which the kernel's own
evaluation (Horner with FMAs) gives exactly 1/2, and its numerator is scaled by a margin 1 - m so that no
float32 below L gives more: so sigmoid stays in [0, 1], silu(x) <= x, and silu, gelu and sigmoid saturate
exactly (gelu(-1e30) is -0, silu(1e30) is 1e30) without the two min/max of an output clamp. Folding the
halvings into the coefficients and dropping that clamp took SiLU from 33 to 26 us and GELU from 45 to 34
over 2^18 floats on one Intel AVX-512 core (beyond a copy's 30 us). tests/schedules/test_activations.py
checks every float32 below L.

The one division stays: its denominator Q(x^2) lies in [1, ~400], and a reciprocal from the exponent trick
with three Newton steps (seven vector ops, no division) made SiLU 41 us and GELU 46 us over 2^18 floats on one
Zen 5 core, against 28 and 33 us with the division (session 39).

NaN stays NaN through the smooth ones (their factor x, and the clamp of the input keeps it); relu, relu6 and
the hard ones are max/min, whose NaN behaviour is LLVM's select on an ordered compare (NaN becomes the
bound). The IR ops they stand for are in ``ACTIVATION_OPS`` (``activation_of`` says which a node is).
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


# tanh(x) = x P(x^2) / Q(x^2) on |x| <= 9 (beyond, tanh(x) rounds to +-1 in float32): fitted as erf's on
# 8000 points, degrees 4/4, |error| <= 3.3e-7. sigmoid(x) = (1 + tanh(x / 2)) / 2 through it: SiLU over 2^20
# floats on one Zen 4 core took 358 us as x / (1 + exp(-x)) with a Cephes exp polynomial, 293 us this way.
_TANH_P = (0.9999999832363725, 0.13392406432168732, 0.0035091028924427985, 2.083142214971434e-05,
           1.3662660806322051e-08)
_TANH_Q = (1.0, 0.4672572507948815, 0.02592840185469394, 0.0003307734176251614, 7.902634641017389e-07)

# tanh(x / 2) / 2 = x P'(x^2) / Q'(x^2): P'_i = P_i / 4^(i + 1), Q'_i = Q_i / 4^i
_SIGMOID_MARGIN = 2e-7
_SIGMOID_P = tuple((1 - _SIGMOID_MARGIN) * p / 4 ** (i + 1) for i, p in enumerate(_TANH_P))
_SIGMOID_Q = tuple(q / 4 ** i for i, q in enumerate(_TANH_Q))
SIGMOID_LIMIT = 17.50078773498535  # first float32 where the kernels' sigmoid(x) - 1/2 is exactly 1/2


def centred_sigmoid(x):
    """sigmoid(x) - 1/2 = tanh(x / 2) / 2, in [-1/2, 1/2], exactly +-1/2 for |x| >= ``SIGMOID_LIMIT``;
    |error| <= 2.4e-7."""
    a = _clamp_keeping_nan(x, -SIGMOID_LIMIT, SIGMOID_LIMIT)
    t = a * a
    return a * _polynomial(_SIGMOID_P, t) / _polynomial(_SIGMOID_Q, t)


def sigmoid(x):
    return _c(0.5) + centred_sigmoid(x)


def silu(x):  # x sigmoid(x); NaN stays NaN through the factor x
    return x * (_c(0.5) + centred_sigmoid(x))


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
