"""The CPU schedule of row-wise functions (schedules/row_reduction.py): softmax, log-softmax and a layer norm
over the last axis as TVM legalizes them (fast math on), against numpy, for rows that are and aren't whole
vectors; which functions it leaves to the other rules; and that it is tried before them."""

import numpy as np
import pytest
import tvm
from tvm import relax

from convopt.schedules.row_reduction import RowReduction, partial_lanes
from convopt.target import resolve_target

TARGET = resolve_target("cpu")


def _legalized(shape, build):
    """The one PrimFunc TVM's "zero" pipeline (after FastMathTransform) makes of ``build(x)`` on ``shape``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(build(x))
        bb.emit_func_output(y)
    with TARGET.tvm:
        mod = relax.get_pipeline("zero")(relax.transform.FastMathTransform()(bb.get()))
    (func,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    return func.with_attr("global_symbol", "main")


def _softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _layer_norm(a):
    return (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5)


CASES = {
    "softmax": (lambda x, n: relax.op.nn.softmax(x, axis=-1), _softmax),
    "log_softmax": (lambda x, n: relax.op.nn.log_softmax(x, axis=-1), lambda a: np.log(_softmax(a))),
    "layer_norm": (lambda x, n: relax.op.nn.layer_norm(x, relax.const(np.ones(n, "float32")),
                                                       relax.const(np.zeros(n, "float32")), axes=[-1]), _layer_norm),
}


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("shape", [(2, 3, 196, 196), (64, 192), (49, 49), (5, 7, 36)],
                         ids=["attention-196", "whole-vectors", "odd", "partial-4"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_row_functions_match_numpy(case, shape, lanes):
    build, reference = CASES[case]
    func = _legalized(shape, lambda x: build(x, shape[-1]))
    sch = RowReduction(lanes).apply(func, TARGET.tvm, False)
    assert sch is not None
    text = sch.mod.script()
    assert "T.parallel" in text
    if partial_lanes(shape[-1], lanes) >= 4:
        assert "_rf" in text and "T.vectorized" in text  # the reductions' partial results are a vector
    run = tvm.compile(sch.mod, target=TARGET.tvm)["main"]  # 16 lanes run as two halves on AVX2
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3
    out = tvm.runtime.empty(shape, "float32", tvm.cpu())
    extras = [np.ones(shape[-1], np.float32), np.zeros(shape[-1], np.float32)] if case == "layer_norm" else []
    run(tvm.runtime.tensor(a), *map(tvm.runtime.tensor, extras), out)  # (the norm's constants are arguments)
    want = reference(a.astype(np.float64))
    assert np.abs(out.numpy() - want).max() / np.abs(want).max() <= 1e-5


def test_partial_results_are_the_largest_power_of_two_dividing_the_row():
    assert [partial_lanes(n, 16) for n in (196, 192, 49, 36, 8)] == [4, 16, 1, 4, 8]
    assert partial_lanes(192, 8) == 8


@pytest.mark.parametrize("shape, build, why", [
    ((1, 1000), lambda x: relax.op.nn.softmax(x, axis=-1), "one row: nothing to share among threads"),
    ((2, 32, 7, 7), lambda x: relax.op.nn.softmax(x, axis=1), "a softmax over the channels, not the last axis"),
    ((2, 32, 7, 7), lambda x: relax.op.mean(x, axis=[2, 3]), "a mean over two axes, no elementwise output"),
    # the schedule primitives refuse it (a ScheduleError, caught): vgg11 at 128 px pools a blocked 1x1 map
    ((1, 256, 1, 1, 16), lambda x: relax.op.nn.adaptive_avg_pool2d(x, (1, 1), layout="NCHW16c"),
     "a pool over a one-pixel map, whose reduction loops have extent 1"),
])
def test_what_it_leaves_to_the_other_rules(shape, build, why):
    assert RowReduction(16).apply(_legalized(shape, build), TARGET.tvm, False) is None, why


def test_it_comes_before_the_other_reduction_rules():
    from convopt.backends.tvm_backend import default_rules
    from convopt.schedules.cpu_fallback import CheckedReduction, VectorReduction

    names = [type(rule) for rule in default_rules(TARGET)]
    assert names.index(RowReduction) < min(names.index(VectorReduction), names.index(CheckedReduction))
