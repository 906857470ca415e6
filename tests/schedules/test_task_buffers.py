"""The scratch buffers of a parallel loop allocated once per task (convopt/schedules/task_buffers.py): where the
pass splits a loop, where it must not, and that the split kernels compute what the unsplit ones do."""

import numpy as np
import pytest
import tvm
import tvm.sym
from tvm import te, tirx

from convopt.schedules import fused_block, prefetch, task_buffers
from convopt.schedules.fused_block import InvertedResidual

from .conv_cases import HOST, LANES


def _scratch_kernel(rows: int, width: int):
    """out[i, j] = 2 x[i, width - 1 - j] + 1, row i's doubled values staged in a scratch row allocated inside the
    parallel loop over i (a buffer of 4 x ``width`` bytes)."""
    x = te.placeholder((rows, width), name="x")
    doubled = te.compute((rows, width), lambda i, j: x[i, j] * 2.0, name="doubled")
    out = te.compute((rows, width), lambda i, j: doubled[i, width - 1 - j] + 1.0, name="out")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, out]))
    i, _ = sch.get_loops(sch.get_sblock("out"))
    sch.parallel(i)
    sch.compute_at(sch.get_sblock("doubled"), i)
    return sch.mod


def _host_function(mod, target):
    """The module's host PrimFunc as the pass sees it in convopt's build (lowered, split from the device,
    before LowerTVMBuiltin)."""
    seen = []

    @tirx.transform.prim_func_pass(opt_level=0, name="capture")
    def capture(func, _mod, _ctx):
        seen.append(func)
        return func

    real = task_buffers.hoist_task_buffers
    task_buffers.hoist_task_buffers = capture
    try:
        prefetch.compile(mod, tvm.target.Target(target))
    finally:
        task_buffers.hoist_task_buffers = real
    return next(f for f in seen if _parallel_loops(f.body))


def _llvm(cores: int) -> dict:
    return {"kind": "llvm", "num-cores": cores} if cores else {"kind": "llvm"}


def _hoisted(func):
    return task_buffers.hoist_task_buffers(tvm.IRModule({"main": func}))["main"]


def _parallel_loops(stmt):
    """(the loop, the statements of its body) of every parallel loop under ``stmt``."""
    found = []

    def walk(s):
        if isinstance(s, tirx.For):
            if s.kind == tirx.ForKind.PARALLEL:
                body = list(s.body.seq) if isinstance(s.body, tirx.SeqStmt) else [s.body]
                found.append((s, body))
            walk(s.body)
        elif isinstance(s, tirx.SeqStmt):
            for part in s.seq:
                walk(part)
        elif isinstance(s, tirx.AttrStmt):
            walk(s.body)
        elif isinstance(s, tirx.IfThenElse):
            walk(s.then_case)
            if s.else_case is not None:
                walk(s.else_case)

    walk(stmt)
    return found


@pytest.mark.parametrize("rows, cores, tasks", [(8, 2, 2), (5, 2, 2), (7, 3, 3), (4, 3, 2)])
def test_split_allocates_once_per_task(rows, cores, tasks):
    """The parallel loop becomes ``tasks`` tasks (no empty one: 4 rows on 3 cores are 2 tasks of 2), each
    allocating the scratch row first and then running its share of the rows in order."""
    func = _host_function(_scratch_kernel(rows, 512), _llvm(cores))
    [(before, body_before)] = _parallel_loops(func.body)
    assert int(before.extent) == rows
    assert any(isinstance(s, tirx.AllocBuffer) for s in body_before)

    after = _hoisted(func)
    [(loop, body)] = _parallel_loops(after.body)
    assert int(loop.extent) == tasks
    assert isinstance(body[0], tirx.AllocBuffer) and body[0].buffer.name == "doubled"
    inner = body[-1]
    assert isinstance(inner, tirx.For) and inner.kind == tirx.ForKind.SERIAL
    assert inner.loop_var.same_as(before.loop_var)  # the rows' body is unchanged
    assert not any(isinstance(s, tirx.AllocBuffer)
                   for s in (inner.body.seq if isinstance(inner.body, tirx.SeqStmt) else [inner.body]))
    covered = []
    for task in range(tasks):  # the tasks' shares: consecutive, together every row once
        analyzer = tvm.sym.Analyzer()
        analyzer.bind(loop.loop_var, tirx.IntImm(str(loop.extent.ty), task))
        first, count = (int(analyzer.simplify(e).value) for e in (inner.min, inner.extent))
        assert count >= 1
        covered += range(first, first + count)
    assert covered == list(range(rows))


@pytest.mark.parametrize("case", ["small buffer", "few rows", "no cores", "switched off"])
def test_split_leaves_loop(case, monkeypatch):
    """Nothing is split where nothing would be gained: scratch under 1 KB (TVM keeps it on the stack), as
    many iterations as tasks, a target that doesn't say its cores, or HOIST off."""
    rows, width, cores = 8, 512, 2
    if case == "small buffer":
        width = 64  # 256 bytes
    elif case == "few rows":
        rows = 2
    elif case == "no cores":
        cores = 0
    else:
        monkeypatch.setattr(task_buffers, "HOIST", False)
    func = _host_function(_scratch_kernel(rows, width), _llvm(cores))
    after = _hoisted(func)
    assert after.body.same_as(func.body)


@pytest.mark.parametrize("rows, cores", [(8, 2), (5, 2), (7, 3), (1, 2)])
def test_split_kernel_computes_the_same(rows, cores):
    mod = _scratch_kernel(rows, 512)
    lib = prefetch.compile(mod, tvm.target.Target({"kind": "llvm", "num-cores": cores}))
    x = np.random.default_rng(rows).standard_normal((rows, 512)).astype(np.float32)
    out = tvm.runtime.empty((rows, 512), "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(x, tvm.cpu()), out)
    np.testing.assert_array_equal(out.numpy(), 2.0 * x[:, ::-1] + 1.0)


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("bands", [2, 5])
def test_fused_block_ring_hoisted(bands, lanes):
    """The fused inverted residual kernel allocates its ring of expanded rows per (image, band) iteration:
    after the pass its parallel loop has one iteration per core, each allocating the ring once (8- and
    16-lane code on any host; the kernel's numbers: tests/schedules/test_fused_block.py)."""
    block = InvertedResidual.of(16, 64, 16, 14, 14, 3)
    mod = tvm.IRModule({"main": fused_block.prim_func(block, lanes, bands)})
    after = _hoisted(_host_function(mod, HOST.tvm))
    loops = _parallel_loops(after.body)
    assert loops and all(int(loop.extent) <= HOST.cores for loop, _ in loops)
    assert any(isinstance(s, tirx.AllocBuffer) and s.buffer.name == "ring" for _, body in loops for s in body)
