"""Tasks: the model's distinct kernels, weighted by calls; their design spaces' defaults are the untuned code."""

import tvm

from convopt.backends.conv_kernels import schedule_kernels
from convopt.backends.relax_emit import emit
from convopt.tuning.apply import trace_key
from convopt.tuning.tasks import extract_tasks
from tests.tuning.conftest import tiny_graph


def test_equal_layers_are_one_task_weighted_by_calls(tiny, lanes_target):
    graph = tiny_graph(*tiny, lanes_target)
    tasks = extract_tasks(graph, lanes_target)
    by_kind = sorted((t.kind, t.weight) for t in tasks)
    assert by_kind == [("dense", 1), ("direct", 1), ("direct", 2)]
    shared = next(t for t in tasks if t.weight == 2)
    assert len(shared.nodes) == 2 and shared.flops == 2 * 16 * 16 * 9 * 12 * 12
    assert all(list(t.workload.functions) and t.workload["main"].attrs["global_symbol"] == "main" for t in tasks)


def test_the_default_decisions_are_the_untuned_schedule(tiny, lanes_target):
    """The design space MetaSchedule starts from, the task's default and what optimize() compiles without
    records are the same TIR. (Without a TuneContext: building one imports TVM's tensor intrinsics,
    seconds a process even through tuning/intrinsics.py.)"""
    graph = tiny_graph(*tiny, lanes_target)
    mod, kernels = emit(graph, lanes_target)
    untuned = schedule_kernels(mod, lanes_target, kernels)
    for task in extract_tasks(graph, lanes_target):
        default = task.default().mod["main"]
        (space,) = task.space(lanes_target).generate_design_space(task.workload)
        tvm.ir.assert_structural_equal(space.mod["main"], default)
        tvm.ir.assert_structural_equal(untuned[task.name].body, default.body)


def test_points_enumerate_the_space_default_first(tiny, lanes_target):
    graph = tiny_graph(*tiny, lanes_target)
    for task in extract_tasks(graph, lanes_target):
        points = list(task.points())
        keys = [trace_key(p.trace) for p in points]
        assert len(points) == task.size() >= (2 if task.kind == "direct" else 1)  # (10 outputs: one dense tile)
        assert keys[0] == trace_key(task.default().trace)
        assert len(set(keys)) == len(keys)
        scripts = {p.mod["main"].script() for p in points}
        assert len(scripts) == len(points)  # different decisions make different code
