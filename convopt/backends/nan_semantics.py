"""NaN propagates through max and min in every compiled kernel, as in PyTorch.

    max(a, b)  =>  select(isnan(a), a, select(isnan(b), b, max(a, b)))      (min alike)

on floating-point operands (an operand that is a float literal is never NaN and needs no test). TVM lowers
a float ``max(a, b)`` to LLVM's ``select(a > b, a, b)`` or ``maxnum``, both of which drop a NaN operand: a
ReLU (``max(x, 0)``) turned NaN into 0, a max pool skipped NaN windows, a clamp hid them. PyTorch's
``relu``, ``clamp``, ``maximum`` and ``max_pool2d`` return NaN for a NaN input, and users rely on that to
see a model that has gone numerically wrong.

Runs on the whole IRModule after scheduling (tvm_backend.compile_graph, and the tuning builder so
measured kernels are the deployed ones), so it covers convopt's kernels and epilogues and every op that
Relax legalizes. Integer max/min (index arithmetic) is untouched. Cost: one compare and one blend per
max/min, vectorized like the max itself.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm_ffi.structural import structural_map


def _is_float(expr) -> bool:
    return str(expr.ty).startswith(("float", "bfloat"))


def _propagating(expr):
    if not _is_float(expr):
        return expr
    out = expr
    for operand in (expr.b, expr.a):  # a NaN in a wins, as in PyTorch's maximum
        if not isinstance(operand, tirx.FloatImm):
            out = tirx.Select(tirx.isnan(operand), operand, out)
    return out


def propagate_nan_func(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every float max/min rewritten to propagate NaN (see the module docstring)."""
    return structural_map(func, [((tirx.Max, tirx.Min), _propagating)])


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="convopt.PropagateNaN")
def PropagateNaN(func, mod, ctx):  # noqa: N802 - a TVM pass, named like TVM's
    return propagate_nan_func(func)
