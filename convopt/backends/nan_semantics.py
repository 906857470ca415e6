"""NaN propagates through max and min in every compiled kernel, as in PyTorch.

    max(a, c)  =>  max(c, a)                           c a float literal (ReLU: max(x, 0) => max(0, x))
    min(a, c)  =>  min(c, a)
    max(a, b)  =>  select(a < b, b, select(b <= a, a, a + b))
    min(a, b)  =>  select(b < a, b, select(a <= b, a, a + b))

TVM's LLVM code generator emits a float ``max(a, b)`` as ``select(a > b, a, b)`` (``min``: ``a < b``),
which returns ``b`` whenever either is NaN: a NaN in ``b`` propagates, a NaN in ``a`` is dropped. A ReLU
written ``max(x, 0)`` turned NaN into 0, a clamp hid it, a max pool skipped NaN windows; PyTorch's
``relu``, ``clamp``, ``maximum`` and ``max_pool2d`` return NaN for a NaN input, and users rely on that to
see a model that has gone numerically wrong. With a literal (never NaN) the fix is to put it first: the
same single instruction (x86 ``maxps`` is exactly ``select(a > b, a, b)``), and no operand is copied, so
deeply nested activations (a clamp inside a fast tanh inside mish) stay the size they were. With two
variable operands every comparison with a NaN is false, so a NaN falls through to ``a + b``, which is NaN when
either is: two compares, two blends and an add (a third compare, ``a <= b`` after ``b < a``, was redundant;
dropping it took a 3x3 max pool over 64 channel blocks at 112x112 from 68 to 46 us, Zen 5). The operands are
repeated, so this form is meant for the loads of elementwise maxima, where it is hidden by memory traffic (184
vs 182 us over 1M pairs, Zen 4). convopt's max pools don't rely on it: they reduce their windows with a plain
max and detect NaN apart (schedules/pool.py).

Not ``isnan``: TVM scalarizes it in vectorized loops (a vectorized ReLU6 over 1M floats: 1409 us with
isnan guards, 99 us as written here), and its simplifier folds ``a == a`` to true.

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
        return tirx.Max(b, a)
    if _literal(a):
        return tirx.Max(a, b)
    return tirx.Select(a < b, b, tirx.Select(b <= a, a, a + b))  # ordered: a compare decides; else NaN


def _min(a, b):
    if _literal(b):
        return tirx.Min(b, a)
    if _literal(a):
        return tirx.Min(a, b)
    return tirx.Select(b < a, b, tirx.Select(a <= b, a, a + b))


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
