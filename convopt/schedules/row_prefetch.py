"""Software prefetch of the input rows that a direct conv's next output row reads, for a conv that reads an
NCHW tensor straight from a function argument (a TIR pass of convopt's build).

A model's stem reads the model's input, which the run before last touched: after a whole run of other layers
it is in L3 or memory. The direct kernel of a patchify stem (4x4 stride 4, 3 -> 40 channels at 224 px:
convnext's, inception_next's) reads, for each output row y, Cin x KH input rows, a 64-byte line of each in
turn as its column tiles advance: Cin x KH interleaved short streams that the hardware prefetchers don't
follow, so every line is a miss at memory latency. Measured alone on Zen 5 (one process, the input evicted
by streaming 96 MB through the cache before each call, medians of 40 calls in three rounds): 123-135 us a
call without, 36 us with this prefetch, 27-31 warm either way. In a model that stem had read 32 to 105 us
from one `convopt report` to the next.

The rewrite, for the parallel loop over output rows p (TVM gives each thread a contiguous range of p, so
a thread's next row is p + 1) and its column-tile loop i < I directly inside:

    parallel p: for i < I: body(p, i)
      ->  parallel p: for i < I: {for j < L: for c < Cin: for t < KH:
                                     prefetch &x[row(p + 1, c, t), (i L + j) 16]; body(p, i)}

where row(p + 1, c, t) is the input row that tap row t of channel c reads for output row p + 1 (the
kernel's own load index with the block's variables bound so), and L = ceil(ceil(W / 16) / I) lines of 16
floats per input row and column tile, so the next row's lines are requested spread over the current row.
The prefetch is into L1 (the next row's lines are ~10 KB for a stem; into L2 the same stem took 45-48 us).
A prefetch past the end of the tensor never faults (the last row's wraps to row 0: the index is the kernel's
own); results are bit-identical.

Preconditions: a kernel of the direct lowering, whose accumulation block (direct_conv2d.ACC_BLOCK, split by
decompose_reduction) reads a 4-D function argument (NCHW input without
a separate padding pass; a padded conv reads the padding pass's buffer, which it has just written) with the
block variables (n, b, y, x, lane, rc, ry, rx) of direct_conv2d_compute, under a parallel loop whose body is
the column-tile loop; and one output row reads at most ``ROW_BYTES`` of input. Anything else is left as is.

Where it runs: before TVM's lowering, on the scheduled blocks (prefetch.py registers it beside
prefetch_next_chunk). It reads the kernel's structure, not a schedule annotation, so a tuning record's
replayed schedule gets the same prefetch and the records stay valid.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from .cpu_fallback import subexpressions, substitute
from .tiling import LINE_FLOATS
from .tir_rewrite import map_children

PREFETCH_ROWS = True  # module constant, read at build time (benchmarks/constant_ab.py compares builds without it)
ROW_BYTES = 16 * 1024  # at most this much input per output row (Cin x KH rows): it and the next fit any x86 L1d (32 KB+)
LOCALITY = 3  # llvm.prefetch locality 3: prefetcht0, into L1 (the next row is ~10 KB)
UPDATE_BLOCK = "dconv_acc_update"  # direct_conv2d.ACC_BLOCK after decompose_reduction



def _find_update(stmt):
    """The accumulation block's SBlockRealize under ``stmt``, or None."""
    if isinstance(stmt, tirx.For):
        return _find_update(stmt.body)
    if isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            found = _find_update(s)
            if found is not None:
                return found
        return None
    if isinstance(stmt, s_tir.SBlockRealize):
        return stmt if stmt.block.name_hint == UPDATE_BLOCK else _find_update(stmt.block.body)
    return None


def _loop_vars(stmt, out: list) -> list:
    if isinstance(stmt, tirx.For):
        out.append(stmt.loop_var)
        _loop_vars(stmt.body, out)
    elif isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            _loop_vars(s, out)
    elif isinstance(stmt, s_tir.SBlockRealize):
        _loop_vars(stmt.block.body, out)
    return out


def _uses(expr, var) -> bool:
    return any(isinstance(e, tirx.Var) and e.same_as(var) for e in subexpressions(expr))


def _prefetched_columns(parallel: tirx.For, params) -> tirx.For | None:
    """The column-tile loop of ``parallel`` with the next row's prefetches at the top of its body, or None
    where the preconditions (module docstring) don't hold."""
    columns = parallel.body
    if not isinstance(columns, tirx.For) or not isinstance(columns.extent, tirx.IntImm):
        return None
    realize = _find_update(columns.body)
    if realize is None or len(realize.block.iter_vars) != 8:
        return None
    block = realize.block
    inputs = [e for e in subexpressions(getattr(block.body, "value", tirx.const(0, "int32")))
              if isinstance(e, tvm.ir.TensorLoad) and len(e.indices) == 4
              and any(e.source.same_as(p) for p in params)]
    if not inputs:
        return None
    load = inputs[0]
    n, b, y, x, lane, rc, ry, rx = block.iter_vars
    values = list(realize.iter_values)
    if not _uses(values[3], columns.loop_var):  # the loop inside the parallel one is not the column tiles
        return None
    channels, taps = int(rc.dom.extent), int(ry.dom.extent)
    width = int(load.source.shape[3])
    if channels * taps * width * 4 > ROW_BYTES:
        return None
    lines = -(-width // LINE_FLOATS)
    per_tile = -(-lines // int(columns.extent))

    dtype = str(parallel.loop_var.ty.dtype)
    j, c, t = (tirx.Var(name, dtype) for name in ("prefetch_line", "prefetch_channel", "prefetch_tap"))
    # the loops' values for the first column tile of the next row: the parallel loop + 1, every other 0
    loops = {v: tirx.const(0, str(v.ty.dtype)) for v in _loop_vars(columns, [])}
    loops[parallel.loop_var] = parallel.loop_var + 1
    bound = {iv.var: substitute(value, loops) for iv, value in zip(block.iter_vars, values)}
    bound[x.var] = tirx.const(0, str(x.var.ty.dtype))
    bound[lane.var] = tirx.const(0, str(lane.var.ty.dtype))
    bound[rc.var], bound[ry.var] = tirx.Cast(str(rc.var.ty.dtype), c), tirx.Cast(str(ry.var.ty.dtype), t)
    bound[rx.var] = tirx.const(0, str(rx.var.ty.dtype))
    indices = [substitute(index, bound) for index in load.indices]
    column = (columns.loop_var * per_tile + j) * LINE_FLOATS
    indices[3] = indices[3] + tirx.Cast(str(indices[3].ty.dtype), column)
    address = tirx.address_of(tirx.BufferLoad(load.source, indices))
    prefetch = tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, 0, LOCALITY, 1))
    zero = tirx.const(0, dtype)
    nest = tirx.For(j, zero, tirx.const(per_tile, dtype), tirx.ForKind.SERIAL,
                    tirx.For(c, zero, tirx.const(channels, dtype), tirx.ForKind.SERIAL,
                             tirx.For(t, zero, tirx.const(taps, dtype), tirx.ForKind.SERIAL, prefetch)))
    return tirx.For(columns.loop_var, columns.min, columns.extent, columns.kind,
                    tirx.SeqStmt([nest, columns.body]), columns.thread_binding, columns.annotations)


def _rewrite(stmt, params):
    if isinstance(stmt, tirx.For):
        if stmt.kind == tirx.ForKind.PARALLEL:
            columns = _prefetched_columns(stmt, params)
            if columns is None:
                return stmt
            return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, columns, stmt.thread_binding,
                            stmt.annotations)
    if isinstance(stmt, (tirx.For, tirx.SeqStmt, s_tir.SBlockRealize)):
        return map_children(stmt, lambda child: _rewrite(child, params))
    return stmt


@tirx.transform.prim_func_pass(opt_level=0, name="convopt.PrefetchInputRows")
def prefetch_input_rows(func: tirx.PrimFunc, _mod, _ctx) -> tirx.PrimFunc:
    """Prefetch the next output row's input rows in a direct conv that reads an NCHW argument (module
    docstring)."""
    if not PREFETCH_ROWS:
        return func
    params = [p for p in func.params if isinstance(p, tirx.Buffer)]
    body = _rewrite(func.body, params)
    return func if body.same_as(func.body) else func.with_body(body)
