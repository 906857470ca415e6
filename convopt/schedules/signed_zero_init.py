"""A sum's accumulator tile starts at -0.0 instead of +0.0 (a TIR pass of convopt's build).

The rewrite, in every block a schedule's ``decompose_reduction`` made (named ``<block>_init``) whose body
stores the float constant +0.0:

    acc[i] = +0.0      ->      acc[i] = -0.0

-0.0 is the exact identity of IEEE addition ((-0) + x = x for every x, +0 and NaN included, in
round-to-nearest), so every sum accumulated from it is bit-identical to the one from +0.0 except a sum whose
terms are all -0.0 (or that has none), which becomes -0.0, its exact value, instead of +0.0.

Why: the init block of a register tile is a run of vector stores of zeros to the tile's buffer, and LLVM's
MemCpyOpt merges such a run into a ``memset`` call (its bytes are all 0). The reduction's loads and stores of
the tile are promoted to registers, so after the loop the tile is stored whole: each initial store is then
dead, and LLVM's DSE deletes a store that a later one overwrites, but not a memset overwritten by many
stores. So every tile paid a call, a ``vzeroupper`` and 16 stores for nothing; -0.0's bytes (00 00 00 80)
are no byte splat, the stores stay stores and DSE removes them all (and with them the tile's spill to its
scratch buffer before the epilogue). AVX-512's 2 x 8 tiles of 16-lane vectors (1 KB) got the memset; AVX2's
256-byte tiles were stored either way. Measured (Intel Xeon AVX-512, alone, each pair in one process,
interleaved): efficientnet_b0's stem (3 -> 32, 3x3 stride 2 at 224 px) 0.935 of its time twice, 16 -> 96 at
112 px 0.94-0.95, kernels whose tiles had no memset level; whole models level (0.996-1.005 untuned, within the
machine's noise: benchmarks/results/signed_zero_init_s54_rocketlake.md).

Preconditions: float blocks named ``*_init`` are reduction inits that the reduction's update block reads
(TVM's naming); the constant is a float32 or float16 +0.0 (a max's -inf init and integer inits are left
alone). Where it runs: in convopt's TIR pipeline (prefetch.compile) before TVM's lowering, for every CPU
build and every tuning build alike, after the schedule (a tuning record's workload and trace are unchanged).
No lowering's ``codegen_version`` moves: the pass takes the same cost, once a tile, out of every candidate
schedule of a kernel, so the records' choices stand.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx

from .tir_rewrite import map_children, with_block_body

INIT_SUFFIX = "_init"  # the name decompose_reduction gives a reduction's init block
NEGATIVE_ZERO = True  # module constant, read at build time (benchmarks/constant_ab.py compares builds without it)


def _is_positive_float_zero(value) -> bool:
    return (isinstance(value, tirx.FloatImm) and str(value.ty.dtype) in ("float32", "float16")
            and value.value == 0.0 and math.copysign(1.0, value.value) > 0)


def _negated_zero_store(stmt):
    """``stmt`` with its +0.0 stores made -0.0 (the body of an init block: a store, or a sequence of them)."""
    if isinstance(stmt, tirx.BufferStore) and _is_positive_float_zero(stmt.value):
        return tirx.BufferStore(stmt.buffer, tirx.const(-0.0, str(stmt.value.ty.dtype)), stmt.indices)
    if isinstance(stmt, tirx.SeqStmt):
        return map_children(stmt, _negated_zero_store)
    return stmt


def _rewrite(stmt):
    if isinstance(stmt, s_tir.SBlockRealize) and stmt.block.name_hint.endswith(INIT_SUFFIX):
        return with_block_body(stmt, _negated_zero_store(stmt.block.body))
    return map_children(stmt, _rewrite)


@tirx.transform.prim_func_pass(opt_level=0, name="convopt.SignedZeroInit")
def signed_zero_init(func: tirx.PrimFunc, _mod, _ctx) -> tirx.PrimFunc:
    """Start the decomposed sums of ``func`` at -0.0 (module docstring)."""
    if not NEGATIVE_ZERO:
        return func
    body = _rewrite(func.body)
    return func if body.same_as(func.body) else func.with_body(body)
