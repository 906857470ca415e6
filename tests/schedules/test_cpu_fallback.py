"""The default CPU schedule of the ops convopt has no kernel for: parallel, and vectorized where the
innermost loop allows, including reductions over channel-blocked tensors (pooling, spatial means)."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from convopt.numerics import relative_error
from convopt.schedules import cpu_fallback
from convopt.schedules.cpu_fallback import ParallelFallback

from .conv_cases import LANES, host

SHIPPED_MIN_PARALLEL_ITERATIONS = cpu_fallback.MIN_PARALLEL_ITERATIONS


@pytest.fixture(autouse=True)
def every_loop_nest_parallel(monkeypatch):
    """The schedules' structure on shapes small enough to read: every loop nest is shared among threads, as
    one above the size threshold is (the threshold's own tests set it back)."""
    monkeypatch.setattr(cpu_fallback, "MIN_PARALLEL_ITERATIONS", 1)


def _run(op, shape, lanes, rule=None):
    """(the scheduled TIR as text, the op's result on random data) for one relax op built with ``op(x)``,
    scheduled by ``rule`` (default ParallelFallback)."""
    target = host(lanes)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(op(x)))
        bb.emit_func_output(out)
    dlight = tvm.s_tir.dlight
    with target.tvm:
        mod = relax.get_pipeline("zero")(bb.get())
        mod = dlight.ApplyDefaultSchedule(rule or ParallelFallback(lanes))(mod)
    text = "\n".join(f.script() for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    data = np.random.default_rng(0).standard_normal(shape).astype("float32")
    vm = relax.VirtualMachine(tvm.compile(mod, target=target.tvm), tvm.cpu())
    return text, torch.from_dlpack(vm["main"](tvm.runtime.tensor(data))).clone(), torch.from_numpy(data)


def _blocked(t: torch.Tensor, b: int) -> torch.Tensor:
    n, c, h, w = t.shape
    return t.reshape(n, c // b, b, h, w).permute(0, 1, 3, 4, 2).contiguous()


@pytest.mark.parametrize("lanes", LANES)
def test_blocked_max_pool_runs_the_channel_block_vectorized(lanes):
    shape = (1, 2, 9, 9, lanes)
    text, out, data = _run(lambda x: relax.op.nn.max_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1),
                                                            layout=f"NCHW{lanes}c"), shape, lanes)
    assert "T.vectorized" in text and "T.parallel" in text
    nchw = data.permute(0, 1, 4, 2, 3).reshape(1, 2 * lanes, 9, 9)
    expected = _blocked(torch.nn.functional.max_pool2d(nchw, 3, 2, 1), lanes)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("lanes", LANES)
def test_blocked_spatial_mean_runs_the_channel_block_vectorized(lanes):
    shape = (2, 3, 7, 5, lanes)
    text, out, data = _run(lambda x: relax.op.mean(x, [2, 3], keepdims=True), shape, lanes)
    assert "T.vectorized" in text
    assert torch.allclose(out, data.mean((2, 3), keepdim=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lanes", LANES)
def test_a_blocked_mean_divides_in_the_parallel_loop_it_summed_in(lanes):
    """A global average pool of a blocked tensor: one parallel loop over channel blocks, each summing its
    block and dividing it, vectorized (before: a second parallel loop, scalar, for the division)."""
    shape = (1, 6, 7, 7, lanes)
    text, out, data = _run(lambda x: relax.op.nn.adaptive_avg_pool2d(x, (1, 1), layout=f"NCHW{lanes}c"),
                           shape, lanes)
    assert text.count("T.parallel") == 1
    assert text.count("T.vectorized") == 3  # the sum's initialization, its update, the division
    assert relative_error(out, data.double().mean((2, 3), keepdim=True)) < 1e-6


@pytest.mark.parametrize("lanes", LANES)
def test_a_loop_nest_below_the_threshold_runs_on_one_core(monkeypatch, lanes):
    """A multiply of 32 x 16 values (fold_channel_scale's scaling of a small weight) stays serial; one of
    64 x 64 is shared among the threads."""
    monkeypatch.setattr(cpu_fallback, "MIN_PARALLEL_ITERATIONS", SHIPPED_MIN_PARALLEL_ITERATIONS)
    for shape, threads in (((32, 16), False), ((64, 64), True)):
        assert (shape[0] * shape[1] >= SHIPPED_MIN_PARALLEL_ITERATIONS) == threads
        text, out, data = _run(lambda x: relax.op.multiply(x, relax.const(3.0, "float32")), shape, lanes)
        assert ("T.parallel" in text) == threads
        assert torch.equal(out, data * 3.0)


def test_a_reduction_over_the_innermost_axis_stays_scalar_and_correct():
    text, out, data = _run(lambda x: relax.op.sum(x, [3]), (2, 4, 6, 33), 8)
    assert "T.parallel" in text
    assert relative_error(out, data.sum(3)) < 1e-6  # (a sum's rounding depends on the FMA order LLVM picks)


def test_blocked_reduction_takes_blocked_reductions_before_dlights_reduction_rule():
    from convopt.schedules.cpu_fallback import VectorReduction

    def primfunc(shape, axes):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(shape, "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(bb.emit(relax.op.mean(x, axes, keepdims=True)))
            bb.emit_func_output(out)
        mod = relax.get_pipeline("zero")(bb.get())
        return next(f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))

    target = host(16)
    rule = VectorReduction(16)
    scheduled = rule.apply(primfunc((1, 2, 9, 9, 16), [2, 3]), target.tvm, False)
    assert scheduled is not None and "T.vectorized" in scheduled.mod.script()
    assert rule.apply(primfunc((1, 32, 9, 9), [2, 3]), target.tvm, False) is None  # 81 pixels: dlight's rule
    assert rule.apply(primfunc((1, 32, 9, 9), [1]), target.tvm, False) is None  # over channels: strided
    scheduled = rule.apply(primfunc((1, 32, 8, 12), [2, 3]), target.tvm, False)  # 96 pixels: 6 vectors
    assert scheduled is not None and "T.vectorized" in scheduled.mod.script()


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("shape, axes", [((2, 5, 8, 8), [2, 3]), ((3, 2, 4 * 16), [2]), ((2, 6, 7, 16), [2, 3]),
                                         ((2, 3, 4, 8, 8), [2, 3, 4])])
def test_a_reduction_over_the_innermost_axes_of_nchw_sums_whole_vectors(lanes, shape, axes):
    """A spatial mean of NCHW: the reduction rfactored into one vector of partial sums per output."""
    from convopt.schedules.cpu_fallback import VectorReduction

    text, out, data = _run(lambda x: relax.op.mean(x, axes, keepdims=True), shape, lanes, VectorReduction(lanes))
    assert f"T.vectorized(T.int64({lanes}))" in text and "_rf" in text and "T.parallel" in text
    assert torch.allclose(out, data.mean(axes, keepdim=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, axis, recomputed", [((1, 1000), -1, True), ((3, 40), -1, False),
                                                     ((1, 8, 61, 8), 2, True)])
def test_a_softmax_over_one_row_is_not_recomputed_for_every_output(shape, axis, recomputed):
    """dlight's reduction rule puts a [1, N] softmax's sums under the output's parallel loop over N (every
    iteration redoes them into one shared accumulator), and a softmax over the tokens of [1, heads, N, C]
    (CoaT) under a loop fused over heads and N; CheckedReduction declines those schedules."""
    from convopt.schedules.cpu_fallback import CheckedReduction, VectorReduction, _recomputes_a_reduction

    target = host(16)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.nn.softmax(x, axis)))
        bb.emit_func_output(out)
    dlight = tvm.s_tir.dlight
    with target.tvm:  # a fresh module each: a pass may update a module it holds the only reference to
        plain = dlight.ApplyDefaultSchedule(dlight.cpu.Reduction())(relax.get_pipeline("zero")(bb.get()))
        checked = dlight.ApplyDefaultSchedule(VectorReduction(16), CheckedReduction(), ParallelFallback(16))(
            relax.get_pipeline("zero")(bb.get()))
    funcs = [(p, c) for p, c in zip(plain.functions.values(), checked.functions.values())
             if isinstance(c, tvm.tirx.PrimFunc)]
    assert any(_recomputes_a_reduction(p) for p, _ in funcs) == recomputed
    assert not any(_recomputes_a_reduction(c) for _, c in funcs)
    data = np.random.default_rng(0).standard_normal(shape).astype("float32")
    vm = relax.VirtualMachine(tvm.compile(checked, target=target.tvm), tvm.cpu())
    result = torch.from_dlpack(vm["main"](tvm.runtime.tensor(data))).clone()
    assert torch.allclose(result, torch.from_numpy(data).softmax(axis), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("lanes", LANES)
def test_a_matrix_vector_product_of_rows_unrolls_at_most_16_steps(lanes):
    """GCNet's global context, [64, 400] x [400, 1]: dlight's GEMV rule vectorizes the rows and unrolls the
    reduction 256 steps (LLVM took 20 s per such kernel); BoundedGEMV keeps its schedule with 16."""
    import re

    from convopt.schedules.cpu_fallback import BoundedGEMV

    weight = np.random.default_rng(1).standard_normal((1, 1, 64, 400)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 400, 1), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.matmul(relax.const(weight), x)))
        bb.emit_func_output(out)
    with host(lanes).tvm:  # scheduled, not compiled (that is the slow part)
        mod = tvm.s_tir.dlight.ApplyDefaultSchedule(tvm.s_tir.dlight.cpu.GEMV())(relax.get_pipeline("zero")(bb.get()))
    plain = "\n".join(f.script() for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    text, out, data = _run(lambda x: relax.op.matmul(relax.const(weight), x), (1, 1, 400, 1), lanes, BoundedGEMV())
    steps = lambda t: [int(s) for s in re.findall(r'"pragma_auto_unroll_max_step": (\d+)', t)]  # noqa: E731
    assert max(steps(plain)) == 256 and steps(text) and max(steps(text)) == 16
    assert relative_error(out, torch.from_numpy(weight) @ data) < 1e-6  # (2.3e-5 absolute on Intel's LLVM)


@pytest.mark.parametrize("lanes", LANES)
def test_a_concatenation_is_not_inlined_into_an_activation_that_reads_it_twice(lanes):
    """MixNet: concat of mixed-kernel convs -> SiLU. Inlined, the concatenation's if_then_else chain is copied
    into every read of SiLU's input (fast sigmoid reads it a dozen times: 276 if_then_else, 0.88 ms for 188k
    elements); kept as its own vectorized block, it is chosen once per element."""
    def silu_of_cat(x):
        c = relax.op.concat([x, relax.op.multiply(x, relax.const(2.0)), relax.op.add(x, relax.const(1.0))], 1)
        return relax.op.multiply(c, relax.op.sigmoid(c))

    text, out, data = _run(silu_of_cat, (1, 24, 8, 8), lanes)
    assert text.count("T.if_then_else") == 2  # one chain choosing among the 3 parts
    expected = torch.cat([data, data * 2, data + 1], 1)
    assert torch.allclose(out, expected * torch.sigmoid(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lanes", LANES)
def test_elementwise_rows_that_are_not_whole_vectors_go_to_the_threads_row_by_row(lanes):
    """A pad to odd rows (HGNetV2's stem: 112 -> 113 columns) after a scale: the threads take whole rows and
    the row is left to LLVM's loop vectorizer; the fused loop vectorized over lanes computed each lane's row
    and column by division (a gather: 17x slower)."""
    shape = (1, 4, 20, 20)
    text, out, data = _run(lambda x: relax.op.nn.pad(relax.op.multiply(x, relax.const(2.0)), (0, 0, 0, 0, 0, 1, 0, 1)),
                           shape, lanes)
    assert "T.parallel(T.int64(84))" in text and "T.vectorized" not in text  # 4 channels x 21 rows: threads
    assert torch.equal(out, torch.nn.functional.pad(data * 2, (0, 1, 0, 1)))
    # rows of whole vectors still vectorize as before
    text, _, _ = _run(lambda x: relax.op.multiply(x, relax.const(2.0)), (1, 4, 6, 4 * lanes), lanes)
    assert "T.vectorized" in text


@pytest.mark.parametrize("lanes", LANES)
def test_planes_shorter_than_a_vector_per_row_go_to_the_threads_plane_by_plane(lanes):
    """shufflenet_v2's channel shuffle of 2 x 48 channels at 7x7 (cat, [1, 2, 48, 7, 7], transpose): rows of 7,
    planes of 49, neither whole vectors. The threads take whole planes (96 of them) and LLVM's loop vectorizer
    each plane; the fused loop vectorized over lanes had gathered every lane by division (78-96 us against 4-5
    at 14x14, Zen 5)."""
    def shuffle(x):
        c = relax.op.concat([x, relax.op.multiply(x, relax.const(2.0))], 1)
        c = relax.op.permute_dims(relax.op.reshape(c, (1, 2, 48, 7, 7)), [0, 2, 1, 3, 4])
        return relax.op.reshape(c, (1, 96, 7, 7))

    text, out, data = _run(shuffle, (1, 48, 7, 7), lanes)
    assert "T.parallel(T.int64(96))" in text and "T.vectorized" not in text
    expected = torch.cat([data, data * 2], 1).view(1, 2, 48, 7, 7).transpose(1, 2).reshape(1, 96, 7, 7)
    assert torch.equal(out, expected)
    # too few planes to share among threads: as before, the fused loop goes to them
    text, _, _ = _run(lambda x: relax.op.multiply(x, relax.const(2.0)), (1, 2, 3, 7), lanes)
    assert "T.parallel(T.int64(42))" in text
