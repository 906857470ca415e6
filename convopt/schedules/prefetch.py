"""Software prefetch of a chunked conv's next weight chunk, spread over the output rows of the current one.

A conv whose register tile's weights exceed the L1 runs its reduction in chunks (tiling.reduction_chunk):

    for tile t: for chunk c: for row y: for columns: for ic in chunk c: for taps: acc[y] += x * W[t, ic, tap]

Row 0 of a chunk reads the chunk's weights from wherever they are (rows 1.. from L1): one 64 B line per
2 x ow_tile FMAs of each weight stream, a burst above one core's share of the memory bandwidth. A layer's
weights come from memory when they exceed the L2 (resnet50's stage-4 convs: 4-9 MB each, read once per
inference), and then row 0 stalls: measured alone with weights cycled through 96 MB of copies, 2048->512 at
7x7 ran at 66% of the FMA peak against 88% with warm weights. So before row y of chunk c the kernel
prefetches the y-th part of the next chunk's weights (after a tile's last chunk, the first chunk of the next
tile its thread runs), into L2 (`prefetcht1`):

    for t: for c: for y: [for j < L: for s < ot: prefetch W[next(t, c, s), line y*L + j]]; <row y as before>

with L = ceil(chunk x KH x KW x ob / 16 / OH) lines of 16 floats per weight stream (one stream per
output-channel block of the tile). The same convs measured so: 66 -> 77% (2048->512 at 7x7), 74 -> 86% (3x3 512->512 at 7x7),
61 -> 73% (1x1 1024->2048 stride 2), 82 -> 86% (1024->256 at 14x14); results are bit-identical (a prefetch
changes no value).

Winograd's batched GEMM (winograd.py) reads its transformed weights the same way: each parallel task
(xi, nu, a pair of output-channel blocks) multiplies a slab U[xi, nu, blocks, :, :] (2 x C' x 16 floats: 24 KB
for 192 channels) into every group of tiles, the first group reading the slab from L3 or memory. So while it
runs, the task prefetches the slab of the task after it (the next index of the parallel loop: the same
thread's next task under TVM's static partition), a line per output-channel block for each input channel of
the reduction, input channel c's lines during tile group c mod G (of the task's G groups):

    for task f: for tile group g: for c: [if c % G == g: for s < ot: prefetch U[task f + 1, block s, c, lane 0]]; ...

Spread so over the whole task (session 39), not issued all in its first group (session 37): the first group
asked for the whole slab (64 KB for 512 channels) in a quarter of the task's time, more than a core's share of
the memory bandwidth, and resnet50's 512-channel F(2,3) at 7 px ran 494 us in the model against 351 alone with
warm weights. With the shipped tuning records, both builds in one process, 3 rounds of 11 interleaved,
spread / first group: resnet50 0.970-0.979, resnet18 0.911-0.929, repvgg_a0 0.879-0.894 (built in the other
order 0.921-0.935). Untuned, two models no test names: resnet34 0.911-0.923, dla34 0.924-0.933.

marked by ``annotate_next_task`` on the reduction loop (``PREFETCH_NEXT_TASK``: the weight's name, then the
names of the parallel, tile-group, output-channel-block, lane and tile loops).

How: the schedule marks the rows loop of a chunked reduction (``sch.annotate(rows, PREFETCH_NEXT_CHUNK,
"weight,stream,channel,tap_y,tap_x,lane")``: the weight buffer's name and its loops' names, for the replay
of a tuning record as for the default), and :func:`prefetch_next_chunk`, a module pass run before TVM's lowering
(:func:`compile`), writes the prefetch loop at the top of that loop's body. The chunk loop is the marked
loop's parent; the other loops inside it don't move the weight index (the column tiles) or are replaced by
the line walk. A prefetch past the end of the weights (the last tile) is harmless: it never faults.

A tuning record replays a kernel's schedule, not these passes: a change here that alters a lowering's kernels
bumps that lowering's ``codegen_version`` (conv_spec.Lowering), so that its records read as stale.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.tirx.compilation_pipeline import get_tir_pipeline, register_tir_pipeline

from . import row_prefetch, signed_zero_init, task_buffers
from .cpu_fallback import subexpressions, substitute
from .tiling import LINE_FLOATS

PREFETCH_NEXT_CHUNK = "convopt.prefetch_next_chunk"
PREFETCH_NEXT_TASK = "convopt.prefetch_next_task"
LOCALITY = 2  # llvm.prefetch locality 2: prefetcht1, into L2 (the next chunk would evict the current one from L1)


def annotate(sch, rows, weight: str, stream, channel, tap_y, tap_x, lane, unrolled=None) -> None:
    """Mark ``rows`` (the loop over output rows inside a reduction chunk) for :func:`prefetch_next_chunk`.
    ``stream``: the loop over the tile's output-channel blocks; ``channel``: over the input channels of a
    chunk; ``tap_y``/``tap_x``: over the kernel taps, in the weight's order; ``lane``: over a block's output
    channels; ``unrolled``: when the chunk's channels are split in two (conv_spec.unrolled_channels), the
    inner loop (``channel`` is then the outer). The weight is laid out [block, channel, tap_y, tap_x, lane]."""
    loops = (stream, channel, tap_y, tap_x, lane) + ((unrolled,) if unrolled is not None else ())
    names = [weight] + [sch.get(loop).loop_var.name for loop in loops]
    sch.annotate(rows, PREFETCH_NEXT_CHUNK, ",".join(names))


def annotate_next_task(sch, reduction, weight: str, task, group, stream, lane, tile) -> None:
    """Mark ``reduction`` (the loop over input channels inside a tile group) for the next task's prefetch:
    ``task`` the parallel loop, ``group`` the loop over groups of tiles (channel c prefetches in group c mod G),
    ``stream`` the loop over the tile's output-channel blocks, ``lane`` over a block's channels, ``tile``
    over the group's tiles (the weight index ignores it)."""
    names = [weight] + [sch.get(loop).loop_var.name for loop in (task, group, stream, lane, tile)]
    sch.annotate(reduction, PREFETCH_NEXT_TASK, ",".join(names))



def _nest(stmt):
    loops = []
    while isinstance(stmt, tirx.For):
        loops.append(stmt)
        stmt = stmt.body
    return loops, stmt


def _weight_indices(loop, annotation: str, weight: str):
    """(the loops inside ``loop``, the indices of the first load of ``weight`` in its single block, in loop
    variables)."""
    loops, realize = _nest(loop.body)
    if not isinstance(realize, s_tir.SBlockRealize):
        raise ValueError(f"{annotation}: the loop {loop.loop_var.name} holds no single block")
    block = realize.block
    loads = [e for e in subexpressions(getattr(block.body, "value", tirx.const(0, "int32")))
             if isinstance(e, tvm.ir.TensorLoad) and e.source.name == weight]
    if not loads:
        raise ValueError(f"{annotation}: block {block.name_hint} reads no buffer {weight!r}")
    bound = tirx.IndexMap([iv.var for iv in block.iter_vars], list(loads[0].indices), None)
    return loops, loads[0].source, list(bound.map_indices(list(realize.iter_values)))


def _prefetch_loop(chunk_loop, rows_loop):
    weight, *names = str(rows_loop.annotations[PREFETCH_NEXT_CHUNK]).split(",")
    loops, buffer, indices = _weight_indices(rows_loop, PREFETCH_NEXT_CHUNK, weight)
    by_name = {loop.loop_var.name: loop for loop in loops}
    if any(n not in by_name for n in names):
        raise ValueError(f"{PREFETCH_NEXT_CHUNK}: loops {names} not all inside {rows_loop.loop_var.name}")
    stream, channel, tap_y, tap_x, lane, *unrolled = (by_name[n] for n in names)
    kh, kw, lanes = int(tap_y.extent), int(tap_x.extent), int(lane.extent)
    inner = int(unrolled[0].extent) if unrolled else 1  # the chunk's channels = channel x unrolled
    chunk, streams, chunks = int(channel.extent) * inner, int(stream.extent), int(chunk_loop.extent)
    lines_per_row = -(-chunk * kh * kw * lanes // LINE_FLOATS // int(rows_loop.extent))

    dtype = str(rows_loop.loop_var.ty.dtype)  # int32, or int64 in a module Relax made
    j, s = tirx.Var("prefetch_line", dtype), tirx.Var("prefetch_stream", dtype)
    element = (rows_loop.loop_var * lines_per_row + j) * LINE_FLOATS  # of a stream's next chunk
    weight_set = tirx.floordiv(element, lanes)  # (channel, tap_y, tap_x) of the line's first element
    last = chunk_loop.loop_var >= chunks - 1
    # column tiles, lanes: the weight index ignores them
    mapping = {loop.loop_var: tirx.const(0, str(loop.loop_var.ty.dtype)) for loop in loops}
    mapping[chunk_loop.loop_var] = tirx.Select(last, tirx.const(0, dtype), chunk_loop.loop_var + 1)
    mapping[stream.loop_var] = tirx.Select(last, s + streams, s)  # the thread's next tile after the last chunk
    mapping[channel.loop_var] = tirx.floordiv(tirx.floordiv(weight_set, kh * kw), inner)
    if unrolled:
        mapping[unrolled[0].loop_var] = tirx.floormod(tirx.floordiv(weight_set, kh * kw), inner)
    mapping[tap_y.loop_var] = tirx.floormod(tirx.floordiv(weight_set, kw), kh)
    mapping[tap_x.loop_var] = tirx.floormod(weight_set, kw)
    mapping[lane.loop_var] = tirx.floormod(element, lanes)
    target = [substitute(index, mapping) for index in indices]
    address = tirx.address_of(tirx.BufferLoad(buffer, target))
    prefetch = tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, 0, LOCALITY, 1))
    zero = tirx.const(0, dtype)
    return tirx.For(j, zero, tirx.const(lines_per_row, dtype), tirx.ForKind.SERIAL,
                    tirx.For(s, zero, tirx.const(streams, dtype), tirx.ForKind.UNROLLED, prefetch))


def _next_task_prefetch(reduction, enclosing: dict):
    """The prefetch of the next task's weights at the top of a marked reduction loop (module docstring)."""
    weight, task, group, stream, lane, tile = str(reduction.annotations[PREFETCH_NEXT_TASK]).split(",")
    loops, buffer, indices = _weight_indices(reduction, PREFETCH_NEXT_TASK, weight)
    by_name = {**enclosing, **{loop.loop_var.name: loop for loop in loops}}
    if any(n not in by_name for n in (task, group, stream, lane, tile)):
        raise ValueError(f"{PREFETCH_NEXT_TASK}: loops {task, group, stream, lane, tile} not all around or inside "
                         f"{reduction.loop_var.name}")
    dtype = str(reduction.loop_var.ty.dtype)
    s = tirx.Var("prefetch_stream", dtype)
    mapping = {by_name[task].loop_var: by_name[task].loop_var + 1, by_name[stream].loop_var: s}
    for name in (lane, tile):  # the slab's first lane; the weight index ignores the tile
        mapping[by_name[name].loop_var] = tirx.const(0, str(by_name[name].loop_var.ty.dtype))
    address = tirx.address_of(tirx.BufferLoad(buffer, [substitute(index, mapping) for index in indices]))
    prefetch = tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, 0, LOCALITY, 1))
    streams = tirx.For(s, tirx.const(0, dtype), tirx.const(int(by_name[stream].extent), dtype),
                       tirx.ForKind.UNROLLED, prefetch)
    groups = int(by_name[group].extent)
    if groups == 1:
        return streams
    # channel c's lines in tile group c mod G: the slab's stream spread over the whole task
    return tirx.IfThenElse(tirx.floormod(reduction.loop_var, groups) == by_name[group].loop_var, streams, None)


def _rewrite(stmt, enclosing: dict | None = None):
    enclosing = enclosing or {}
    if isinstance(stmt, tirx.For) and PREFETCH_NEXT_TASK in stmt.annotations:
        annotations = {k: v for k, v in stmt.annotations.items() if k != PREFETCH_NEXT_TASK}
        body = tirx.SeqStmt([_next_task_prefetch(stmt, enclosing), _rewrite(stmt.body, enclosing)])
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding, annotations)
    if isinstance(stmt, tirx.For):
        body = _rewrite(stmt.body, {**enclosing, stmt.loop_var.name: stmt})
        if isinstance(stmt.body, tirx.For) and PREFETCH_NEXT_CHUNK in stmt.body.annotations:
            rows = stmt.body
            annotations = {k: v for k, v in rows.annotations.items() if k != PREFETCH_NEXT_CHUNK}
            body = tirx.For(rows.loop_var, rows.min, rows.extent, rows.kind,
                            tirx.SeqStmt([_prefetch_loop(stmt, rows), body.body]), rows.thread_binding, annotations)
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding,
                        stmt.annotations)
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([_rewrite(s, enclosing) for s in stmt.seq])
    if isinstance(stmt, s_tir.SBlockRealize):
        b = stmt.block
        block = s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, _rewrite(b.body, enclosing), b.init,
                             b.alloc_buffers,
                             b.match_buffers, b.annotations)
        return s_tir.SBlockRealize(list(stmt.iter_values), stmt.predicate, block)
    return stmt


def _marked(stmt) -> bool:
    """Whether any loop under ``stmt`` is marked (a walk: a module holds a hundred kernels, few marked)."""
    if isinstance(stmt, tirx.For):
        return PREFETCH_NEXT_CHUNK in stmt.annotations or PREFETCH_NEXT_TASK in stmt.annotations or _marked(stmt.body)
    if isinstance(stmt, tirx.SeqStmt):
        return any(_marked(s) for s in stmt.seq)
    if isinstance(stmt, s_tir.SBlockRealize):
        return _marked(stmt.block.body)
    return False


@tirx.transform.prim_func_pass(opt_level=0, name="convopt.PrefetchNextChunk")
def prefetch_next_chunk(func: tirx.PrimFunc, _mod, _ctx) -> tirx.PrimFunc:
    """Write the prefetches of every loop marked by :func:`annotate` or :func:`annotate_next_task` (see the
    module docstring)."""
    return func.with_body(_rewrite(func.body)) if _marked(func.body) else func


def _pipeline():
    lower, finalize_host, finalize_device = get_tir_pipeline("s_tir")

    def finalize_host_hoisted():  # before LowerTVMBuiltin makes scratch buffers workspace calls
        return tvm.transform.Sequential([task_buffers.hoist_task_buffers, finalize_host()])

    return (tvm.transform.Sequential([prefetch_next_chunk, row_prefetch.prefetch_input_rows,
                                      signed_zero_init.signed_zero_init, lower]),
            finalize_host_hoisted, finalize_device)


TIR_PIPELINE = "convopt"
register_tir_pipeline(TIR_PIPELINE, _pipeline)


def compile(mod, target):
    """``tvm.compile`` with the prefetches written: every convopt build of a CPU module goes through here.
    ``target``: a tvm.target.Target."""
    return tvm.compile(mod, target=target, tir_pipeline=TIR_PIPELINE)
