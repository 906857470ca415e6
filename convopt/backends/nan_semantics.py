"""NaN propagates through max and min in every compiled kernel, as in PyTorch.

    max(a, c)  =>  select(a < c, c, a)                 c a float literal (ReLU: max(x, 0))
    min(a, c)  =>  select(c < a, c, a)
    max(a, b)  =>  select(a < b, b, select(b < a, a, select(a <= b, b, a + b)))
    min(a, b)  =>  select(b < a, b, select(a < b, a, select(a <= b, a, a + b)))

Every comparison with a NaN is false, so a NaN operand falls through to the value that keeps it (``a``, or
``a + b``, which is NaN when either is). TVM lowers a float ``max(a, b)`` to LLVM's ``select(a > b, a, b)``
or ``maxnum``, which drop a NaN operand: a ReLU (``max(x, 0)``) turned NaN into 0, a max pool skipped NaN
windows, a clamp hid them. PyTorch's ``relu``, ``clamp``, ``maximum`` and ``max_pool2d`` return NaN for a
NaN input, and users rely on that to see a model that has gone numerically wrong.

Compares, not ``isnan``: TVM scalarizes ``isnan`` in vectorized loops (a vectorized ReLU6 over 1M floats
took 1409 us with isnan guards against 97 us with the compare form and 99 us unguarded, Zen 4), and its
simplifier folds ``a == a`` to true. The literal forms cost nothing (x86 ``maxps`` is exactly
``select(a > b, a, b)``); the general ones three compares and blends instead of one, hidden by memory
traffic where they occur (pools, elementwise maximum: 184 vs 182 us over 1M pairs).

Runs on the whole IRModule after scheduling (tvm_backend.compile_graph, and the tuning job's builds, so
measured kernels are the deployed ones): convopt's kernels and epilogues and every op Relax legalizes.
Integer max/min (index arithmetic) is untouched.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm_ffi.structural import structural_map


def _is_float(expr) -> bool:
    return str(expr.ty).startswith(("float", "bfloat"))


def _literal(expr) -> bool:
    return isinstance(expr, tirx.FloatImm)


def _max(a, b):
    if _literal(b):
        return tirx.Select(a < b, b, a)
    if _literal(a):
        return tirx.Select(b < a, a, b)
    return tirx.Select(a < b, b, tirx.Select(b < a, a, tirx.Select(a <= b, b, a + b)))


def _min(a, b):
    if _literal(b):
        return tirx.Select(b < a, b, a)
    if _literal(a):
        return tirx.Select(a < b, a, b)
    return tirx.Select(b < a, b, tirx.Select(a < b, a, tirx.Select(a <= b, a, a + b)))


def _propagating(expr):
    if not _is_float(expr):
        return expr
    return (_max if isinstance(expr, tirx.Max) else _min)(expr.a, expr.b)


def propagate_nan_func(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every float max/min rewritten to propagate NaN (see the module docstring)."""
    return structural_map(func, [((tirx.Max, tirx.Min), _propagating)])


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="convopt.PropagateNaN")
def PropagateNaN(func, mod, ctx):  # noqa: N802 - a TVM pass, named like TVM's
    return propagate_nan_func(func)
