"""Where the rational coefficients of convopt/schedules/activations.py come from, and what they cost.

    python benchmarks/fit_activations.py

Fits f(x) = x P(x^2) / Q(x^2), Q(0) = 1, to erf on [0, 4] (degrees 5/5) by iteratively reweighted linear
least squares (Loeb's method: minimize sum ((f Q - x P) / (Q_prev f))^2, so the weights approach the
relative error), and 2^f on [-1/2, 1/2] by a degree-5 polynomial with 2^0 = 1 exactly (Lawson's iteration on
the relative error), prints the coefficients and their largest error evaluated in float32 (Horner, as the
kernels do), then times each epilogue activation as a vectorized TVM kernel over 2^20 floats on one core of
this host, in microseconds and cycles per vector at the clock /proc/cpuinfo reports. It also finds the
centred gate's clamp (activations.py: ``CDF_LIMIT``): the first float32 at which the compiled gate,
numerator scaled by its margin, gives exactly 1/2, and checks that no float32 from 1 up to it gives more.
"""

from __future__ import annotations

import math
import time

import numpy as np


def fit_odd_rational(f, limit: float, p_degree: int, q_degree: int, points: int = 6000, rounds: int = 40):
    x = np.linspace(1e-4, limit, points)
    y, t = f(x), x * x
    q_previous = np.ones_like(x)
    for _ in range(rounds):
        columns = [x * t ** i for i in range(p_degree + 1)] + [-y * t ** j for j in range(1, q_degree + 1)]
        weights = 1.0 / (q_previous * y)
        solution, *_ = np.linalg.lstsq(np.stack(columns, 1) * weights[:, None], y * weights, rcond=None)
        p, q = solution[:p_degree + 1], np.concatenate([[1.0], solution[p_degree + 1:]])
        q_previous = np.polyval(q[::-1], t)
    return p, q


def fit_exp2(degree: int = 5, points: int = 40001, rounds: int = 200) -> tuple[np.ndarray, float]:
    """(coefficients of 2^f ~ 1 + c1 f + ... on |f| <= 1/2 for the smallest relative error, that error in
    float32 Horner)."""
    f = np.linspace(-0.5, 0.5, points)
    want = 2.0 ** f
    columns = np.stack([f ** i for i in range(1, degree + 1)], 1) / want[:, None]
    target = 1 - 1 / want  # (1 + columns . c) / want - 1 = columns . c - target
    weights = np.ones_like(f)
    for _ in range(rounds):  # Lawson: weights grow where the error is largest, towards the minimax fit
        root = np.sqrt(weights)
        c, *_ = np.linalg.lstsq(columns * root[:, None], target * root, rcond=None)
        error = np.abs(columns @ c - target)
        weights = weights * (error / error.max() + 1e-4)
        weights /= weights.sum()
    coefficients = np.concatenate([[1.0], c])
    value = np.float32(coefficients[-1])
    for k in coefficients[-2::-1]:
        value = value * f.astype(np.float32) + np.float32(k)
    return coefficients, float(np.abs(value / want - 1).max())


def float32_error(f, p, q, limit: float) -> float:
    x = np.linspace(0, limit * 1.5, 200001)
    a = np.clip(x, -limit, limit).astype(np.float32)
    t = a * a
    num, den = np.float32(p[-1]), np.float32(q[-1])
    for c in p[-2::-1]:
        num = num * t + np.float32(c)
    for c in q[-2::-1]:
        den = den * t + np.float32(c)
    return float(np.abs(a * num / den - f(x)).max())  # unclamped: the kernels clamp to [-1, 1] as well


def cycles_per_vector(activation: str, lanes: int, n: int = 1 << 20) -> tuple[float, float]:
    import tvm
    from tvm import te

    from convopt.schedules.activations import activate
    from convopt.target import resolve_target

    target = resolve_target("cpu")
    x = te.placeholder((n,), name="x")
    y = te.compute((n,), lambda i: activate(x[i], activation), name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    (i,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(i, [None, lanes])[1])
    run = tvm.compile(sch.mod, target=target.tvm)["main"]
    data = tvm.runtime.tensor((np.random.default_rng(0).standard_normal(n) * 3).astype(np.float32))
    out = tvm.runtime.empty((n,), "float32")
    run(data, out)
    best = min(_seconds(run, data, out) for _ in range(20))
    mhz = max(float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz"))
    return best, best * mhz * 1e6 / (n / lanes)


def saturation_limit(gate: str, limit: str, lo: float, hi: float) -> tuple[float, float]:
    """(the first float32 in [lo, hi] where activations.centred_<gate>, its clamp (the module constant
    ``limit``) lifted, is exactly 1/2; the most it gives on [1, that float] minus 1/2: at most 0 for the
    margin to be enough)."""
    import tvm
    from tvm import te

    from convopt.schedules import activations
    from convopt.target import resolve_target

    saved = getattr(activations, limit)
    setattr(activations, limit, 1e30)  # lift the clamp: the gate's own polynomial at every float
    try:
        first, last = np.array([1.0, hi], np.float32).view(np.int32)
        x = np.arange(first, last + 1, dtype=np.int32).view(np.float32)
        data = te.placeholder(x.shape, name="x")
        out = te.compute(x.shape, lambda i: getattr(activations, f"centred_{gate}")(data[i]), name="y")
        run = tvm.compile(te.create_prim_func([data, out]), target=resolve_target("cpu").tvm)["main"]
        result = tvm.runtime.empty(x.shape, "float32")
        run(tvm.runtime.tensor(x), result)
        y = result.numpy()
    finally:
        setattr(activations, limit, saved)
    hits = x[(y == 0.5) & (x >= lo)]
    found = float(hits[0]) if len(hits) else float("nan")
    return found, float(y[x <= found].max() - 0.5)


def _seconds(run, *args) -> float:
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def main() -> None:
    erf = np.vectorize(math.erf)
    p, q = fit_odd_rational(erf, 4.0, 5, 5, points=6000)
    print(f"erf on |x| <= 4, degrees (5, 5): |error| in float32 {float32_error(erf, p, q, 4.0):.2e}")
    print(f"  P = {tuple(float(v) for v in p)}\n  Q = {tuple(float(v) for v in q)}")
    coefficients, error = fit_exp2()
    print(f"2^f on |f| <= 1/2, degree 5: relative error in float32 {error:.2e}\n  {tuple(float(v) for v in coefficients)}")
    from convopt.target import resolve_target

    found, over = saturation_limit("normal_cdf", "CDF_LIMIT", 4.5, 4 * math.sqrt(2))
    print(f"centred_normal_cdf: exactly 1/2 first at {found!r}; most above 1/2 below it: {over:.1e}")
    lanes = resolve_target("cpu").lanes
    for activation in ("none", "relu", "sigmoid", "silu", "gelu", "gelu_tanh", "hardswish"):
        seconds, cycles = cycles_per_vector(activation, lanes)
        print(f"{activation:>10s}: {seconds * 1e6:6.0f} us, {cycles:5.1f} cycles per {lanes} floats")


if __name__ == "__main__":
    main()
