"""Scratch buffers of a parallel loop allocated once per thread instead of once per iteration (a TIR pass of
convopt's build).

A buffer a kernel allocates inside a parallel loop (a fused block's ring, an accumulator tile too large for
registers; depthwise's band of padded rows until session 47) is lowered by TVM's ``LowerTVMBuiltin`` to a
``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace`` pair around every iteration of that loop once it
exceeds 1 KB: a thread-local pool lookup each time, ~0.2 us a pair. A depthwise conv at 14 px runs 32
iterations in 3.5 us, so the pairs were 5-10% of it, and in a perf profile of mobileone_s0 the pool's
functions took 2-3% of all samples. TVM runs a parallel loop of n iterations as T tasks (T = its threads),
task t the iterations [t s, min(n, (t + 1) s)), s = ceil(n / T). The pass writes that split out:

    parallel i < n: {alloc A; body(i)}
      ->  parallel t < T: {alloc A; for i in [t s, min(n, (t + 1) s)): body(i)}

so each task allocates once and every iteration it runs reuses the buffer (each iteration writes the buffer
before reading it: the kernels' scratch holds nothing from one iteration to the next). The pool keeps its
64-byte alignment (an LLVM stack buffer would get 16: TVM's codegen caps it there). T is the target's
``num-cores`` (Target.configure_runtime gives TVM's pool that many threads); only loops with more
iterations than that and allocations of constant size directly in the loop's body are rewritten.

Where it runs: first in the host finalization of convopt's TIR pipeline (prefetch.py registers it), after
the loops are final and before ``LowerTVMBuiltin``.
"""

from __future__ import annotations

from tvm import tirx

# Allocations at least this large are workspace calls (tvm::runtime::kMaxStackAlloca; smaller ones are stack
# allocas, free already).
TVM_STACK_LIMIT = 1024
HOIST = True  # module constant, read at build time (benchmarks/constant_ab.py compares builds without it)


def _constant_bytes(buffer) -> int | None:
    """Bytes of a buffer whose shape is constant, else None."""
    elements = 1
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        elements *= int(extent)
    dtype = buffer.dtype
    return elements * ((dtype.bits * dtype.lanes + 7) // 8)


def _hoistable(stmt) -> bool:
    if not isinstance(stmt, tirx.AllocBuffer):
        return False
    size = _constant_bytes(stmt.buffer)
    return size is not None and size >= TVM_STACK_LIMIT


def _split(loop: tirx.For, tasks: int) -> tirx.For:
    """``loop`` (parallel, constant extent) as ``tasks`` parallel tasks that allocate its body's scratch buffers
    once each, or ``loop`` itself where there is nothing to hoist."""
    body = loop.body
    parts = list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]
    hoisted = [s for s in parts if _hoistable(s)]
    extent = loop.extent
    if not hoisted or not isinstance(extent, tirx.IntImm) or not isinstance(loop.min, tirx.IntImm) \
            or int(extent) <= tasks:
        return loop
    rest = [s for s in parts if not _hoistable(s)]
    n, start = int(extent), int(loop.min)
    step = -(-n // tasks)
    tasks = -(-n // step)  # no empty task
    dtype = str(extent.ty)
    task = tirx.Var("task", dtype)
    first = task * tirx.const(step, dtype)
    count = tirx.min(tirx.const(step, dtype), tirx.const(n, dtype) - first)
    inner = tirx.For(loop.loop_var, first + tirx.const(start, dtype), count, tirx.ForKind.SERIAL,
                     rest[0] if len(rest) == 1 else tirx.SeqStmt(rest))
    return tirx.For(task, tirx.const(0, dtype), tirx.const(tasks, dtype), tirx.ForKind.PARALLEL,
                    tirx.SeqStmt([*hoisted, inner]), loop.thread_binding, loop.annotations)


def _rewrite(stmt, tasks: int):
    if isinstance(stmt, tirx.For):
        if stmt.kind == tirx.ForKind.PARALLEL:
            return _split(stmt, tasks)  # (TVM runs one parallel level: nothing inside it is parallel)
        body = _rewrite(stmt.body, tasks)
        if body.same_as(stmt.body):
            return stmt
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding, stmt.annotations)
    if isinstance(stmt, tirx.SeqStmt):
        seq = [_rewrite(s, tasks) for s in stmt.seq]
        return stmt if all(a.same_as(b) for a, b in zip(seq, stmt.seq)) else tirx.SeqStmt(seq)
    if isinstance(stmt, tirx.AttrStmt):
        body = _rewrite(stmt.body, tasks)
        return stmt if body.same_as(stmt.body) else tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body)
    if isinstance(stmt, tirx.IfThenElse):
        then = _rewrite(stmt.then_case, tasks)
        other = None if stmt.else_case is None else _rewrite(stmt.else_case, tasks)
        if then.same_as(stmt.then_case) and (other is None or other.same_as(stmt.else_case)):
            return stmt
        return tirx.IfThenElse(stmt.condition, then, other)
    return stmt


def _tasks(func: tirx.PrimFunc) -> int:
    target = func.attrs.get("target") if func.attrs is not None else None
    if target is None or target.kind.name != "llvm":
        return 0
    return int(target.attrs.get("num-cores", 0) or 0)


@tirx.transform.prim_func_pass(opt_level=0, name="convopt.HoistTaskBuffers")
def hoist_task_buffers(func: tirx.PrimFunc, _mod, _ctx) -> tirx.PrimFunc:
    """Allocate the scratch buffers of parallel loops once per task (module docstring)."""
    tasks = _tasks(func)
    if not HOIST or tasks < 1:
        return func
    body = _rewrite(func.body, tasks)
    return func if body.same_as(func.body) else func.with_body(body)
