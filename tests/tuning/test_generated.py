"""TVM's own kernels as tuning tasks: on CUDA every kernel of the model (convopt has no GPU kernels of its own),
on a CPU the heavy non-conv ops when asked (tune(other_ops=True)). Their spaces are MetaSchedule's default
rules for the target. Without a GPU, CUDA tasks are extracted, their spaces generated and built to CUDA code,
and a record of one applied when the model is compiled; nothing CUDA is run."""

import pytest
import torch
import tvm
from torch import nn

import convopt
from convopt.tuning.intrinsics import import_tensor_intrinsics
from convopt.backends.tvm_backend import compile_graph
from convopt.capture import capture_program
from convopt.pipeline import build, run_passes
from convopt.target import resolve_target
from convopt.tuning.apply import TunedSchedules
from convopt.tuning.records import open_database, records_dir
from convopt.tuning.tasks import GENERATED, extract_tasks
from tests.conftest import cuda_sources

CUDA = {"kind": "cuda", "arch": "sm_80"}


def _convs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1))
    return model.eval(), torch.randn(1, 3, 16, 16)


def _cuda_graph(model, x, target):
    return run_passes(capture_program(model, x).graph, build("inference", target))[0]


def test_a_cuda_target_gets_the_limits_metaschedule_needs():
    target = resolve_target(CUDA)
    assert target.tvm.attrs["max_threads_per_block"] == 1024 and target.key == "cuda-sm_80"
    assert resolve_target({**CUDA, "max_threads_per_block": 256}).tvm.attrs["max_threads_per_block"] == 256


def test_cuda_tasks_are_the_models_kernels_weighted_by_calls():
    target = resolve_target(CUDA)
    tasks = extract_tasks(_cuda_graph(*_convs(), target), target)
    assert {t.kind for t in tasks} == {GENERATED} and all(t.searched for t in tasks)
    # the two equal 16->16 convs (+ bias + ReLU, fused by TVM) are one task called twice
    assert sorted(t.weight for t in tasks) == [1, 1, 2]
    shared = next(t for t in tasks if t.weight == 2)
    assert "conv2d" in shared.name and shared.flops >= 2 * 16 * 16 * 9 * 16 * 16


def test_cuda_design_spaces_build_and_a_record_of_one_is_applied(tmp_path):
    """MetaSchedule's CUDA rules generate each task's space; a point of it builds to CUDA code; committed to
    the target's records as faster than the default, it is what compile_graph builds (nothing runs)."""
    from tvm.s_tir import meta_schedule as ms

    target = resolve_target(CUDA)
    graph = _cuda_graph(*_convs(), target)
    task = next(t for t in extract_tasks(graph, target) if t.weight == 2)
    import_tensor_intrinsics()  # TuneContext imports them: seconds, not minutes
    context = ms.TuneContext(task.workload, target=target.tvm, space_generator=task.space(target),
                             task_name=task.name)
    spaces = context.generate_design_space()
    assert spaces
    chosen = None
    for seed in range(1, 41):  # a point of the space (decisions sampled anew) whose GPU checks all pass
        sch = tvm.s_tir.Schedule(task.workload, seed=seed)
        spaces[seed % len(spaces)].trace.apply_to_schedule(sch, remove_postproc=True,
                                                           decision_provider=lambda *_: None)
        if all(p.apply(sch) for p in context.space_generator.postprocs):
            chosen = sch
            break
    assert chosen is not None
    assert any("__global__" in s for s in cuda_sources(tvm.compile(chosen.mod, target=target.tvm)))

    database = open_database(target, tmp_path, create=True)
    token = database.commit_workload(task.workload)
    args = ms.arg_info.ArgInfo.from_prim_func(task.workload["main"])
    for trace, seconds in ((task.default().trace, 1e-3), (chosen.trace, 1e-4)):
        database.commit_tuning_record(ms.database.TuningRecord(trace, token, [seconds], target.tvm, args))
    assert records_dir(target, tmp_path).is_dir()

    _, kernels, _ = compile_graph(graph, target, TunedSchedules(target, [tmp_path]))
    tuning = kernels[task.name]["tuning"]
    assert {k: tuning[k] for k in ("status", "default_us", "best_us")} == {
        "status": "tuned", "default_us": 1000.0, "best_us": 100.0}
    assert tuning["workload"] and tuning["record"]  # what in_model.py sets aside, if the model says so
    _, untuned, _ = compile_graph(graph, target)
    assert "tuning" not in untuned[task.name]


def test_a_cuda_job_without_a_gpu_here_asks_for_the_rpc_tracker():
    if resolve_target(CUDA).runs_here:
        pytest.skip("this machine has a GPU")
    from convopt.tuning.job import tune

    with pytest.raises(RuntimeError, match="no CUDA device.*rpc="):
        tune(*_convs(), target=CUDA, trials=4, progress=False)


class Pools(nn.Module):
    """A conv whose output goes through two pooling layers on a large map: TVM's kernels, not convopt's (convopt's
    blocked max pool takes no dilated window)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pools = nn.Sequential(nn.MaxPool2d(3, 1, 1, dilation=2), nn.AvgPool2d(3, 1, 1))
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.head(self.pools(torch.relu(self.conv(x))))


def test_a_cpu_job_tunes_the_heavy_other_ops_when_asked(tmp_path):
    from convopt.tuning.job import heavy_other_ops, tune

    torch.manual_seed(0)
    model, x = Pools().eval(), torch.randn(1, 3, 64, 64)
    target = resolve_target("cpu")
    graph = convopt.optimize(model, x, lowering="direct", tuning_logs=False, check=False).graph
    others = heavy_other_ops(graph, target, extract_tasks(graph, target))
    assert {t.name for t in others} == {"max_pool2d", "avg_pool2d"}  # the ReLU is fused into the conv

    summary = tune(model, x, trials=8, log_dir=tmp_path, lowering="direct", progress=False,
                   measure_end_to_end=False, other_ops=True)
    pools = [t for t in summary.tasks if t.kind == GENERATED]
    assert sorted(t.name for t in pools) == ["avg_pool2d", "max_pool2d"]
    assert all(t.trials >= 2 for t in pools)  # the default and searched trials, in the records
    assert list(tmp_path.glob("*/logs/*")), "TVM's logs go under the log folder"
    fast = convopt.optimize(model, x, lowering="direct", tuning_logs=tmp_path)  # checks against eager
    assert {row["status"] for name, row in fast.tuning.items()} <= {"tuned", "default"}

    # a resumed job's search model starts trained on the records: it ranks the measured schedules as measured
    from tvm.s_tir import meta_schedule as ms

    from convopt.tuning.job import trained_cost_model
    from convopt.tuning.records import open_database

    task = next(t for t in others if t.name == "max_pool2d")
    database = open_database(target, tmp_path)
    import_tensor_intrinsics()  # TuneContext imports them: seconds, not minutes
    context = ms.TuneContext(task.workload, target=target.tvm, space_generator=task.space(target),
                             search_strategy="evolutionary", task_name=task.name)
    records = database.get_top_k(database.commit_workload(task.workload), 1 << 30)
    assert len(records) >= 2
    model = trained_cost_model(context, database, task.workload)
    # TVM's XGBModel behind its FFI wrapper: what it learned from (a trial that failed or timed out under load
    # teaches nothing and is left out)
    from convopt.tuning.job import FAILED

    assert model._inst.data_size == sum(max(float(s) for s in r.run_secs) < FAILED for r in records) >= 2
