"""Tuned kernels confirmed inside the model (tuning/in_model.py): the rule, the file, and a job that sets aside
a tuned schedule whose kernel ran slower in the model, after which optimize() runs that kernel's default."""

import json
import types

import pytest
import tvm
import tvm_ffi

import convopt
from convopt.target import resolve_target
from convopt.tuning import job
from convopt.tuning.apply import TunedSchedules
from convopt.tuning.in_model import REJECTED, read_rejected, reject, slower_in_model
from convopt.tuning.records import open_database, records_dir


def _row(status, workload="w1", record="r1"):
    return {"tuning": {"status": status, "default_us": 10.0, "best_us": 8.0, "workload": workload, "record": record}}


def test_a_tuned_kernel_not_faster_in_the_model_is_set_aside():
    kernels = {"slower": _row("tuned", "w1", "r1"), "level": _row("tuned", "w2", "r2"),
               "faster": _row("tuned", "w3", "r3"), "default": _row("default", "w4", None),
               "untuned": {"flops": 1}, "gone": _row("tuned", "w5", "r5")}
    untuned = {"slower": 1.0e-4, "level": 2.0e-4, "faster": 3.0e-4, "default": 1e-4, "untuned": 1e-4}
    tuned = {"slower": 1.2e-4, "level": 2.0e-4, "faster": 2.5e-4, "default": 2e-4, "untuned": 2e-4, "gone": 1e-4}
    assert slower_in_model(untuned, tuned, kernels) == {
        "w1": {"r1": {"default_us": pytest.approx(100.0), "tuned_us": pytest.approx(120.0)}},
        "w2": {"r2": {"default_us": pytest.approx(200.0), "tuned_us": pytest.approx(200.0)}}}
    assert slower_in_model(untuned, tuned, {}) == {}


def test_the_file_merges_and_a_damaged_one_is_skipped_with_a_warning(tmp_path):
    assert read_rejected(tmp_path) == {}
    reject(tmp_path, {"w1": {"r1": {"default_us": 1.0, "tuned_us": 2.0}}})
    reject(tmp_path, {"w1": {"r2": {"default_us": 1.0, "tuned_us": 3.0}}, "w2": {"r3": {}}})
    assert set(read_rejected(tmp_path)) == {"w1", "w2"} and set(read_rejected(tmp_path)["w1"]) == {"r1", "r2"}
    (tmp_path / REJECTED).write_text('{"w1": {"r1": ')  # torn
    with pytest.warns(UserWarning, match=REJECTED):
        assert read_rejected(tmp_path) == {}
    (tmp_path / REJECTED).write_text('["r1"]')  # foreign
    with pytest.warns(UserWarning, match="not a mapping"):
        assert read_rejected(tmp_path) == {}


def test_a_job_sets_aside_a_schedule_slower_in_the_model_and_optimize_runs_the_default(tiny, tmp_path,
                                                                                     monkeypatch):
    model, x = tiny
    target = resolve_target("cpu")
    tasks = job.extract_tasks(convopt.optimize(model, x, lowering="direct", tuning_logs=False, check=False).graph,
                              target)
    task = next(t for t in tasks if t.size() > 1)
    database = open_database(target, tmp_path, create=True)
    token = database.commit_workload(task.workload)
    default, point = list(task.points())[:2]
    # the default measured, and another point measured far faster beside it: optimize() runs that point
    for _ in range(2):
        for sch, seconds in ((default, 1e-3), (point, 1e-5)):
            job._commit(database, token, sch, types.SimpleNamespace(error_msg=None, run_secs=[seconds]), target)
    fast = convopt.optimize(model, x, lowering="direct", tuning_logs=tmp_path)  # checks against eager
    assert {fast.tuning[n]["status"] for n in task.nodes} == {"tuned"}

    def kernel_seconds(untuned, tuned, example_inputs):  # in the model the tuned kernel ran slower
        names = {k for k, row in tuned._compiled.kernels.items() if row.get("tuning", {}).get("status") == "tuned"}
        return {k: 1e-4 for k in names}, {k: 2e-4 for k in names}

    monkeypatch.setattr(job, "_kernel_seconds", kernel_seconds)
    summary = job.tune(model, x, trials=0, log_dir=tmp_path, lowering="direct", progress=False, lowering_margin=1.0)
    assert summary.rejected_in_model is not None and summary.rejected_in_model[0] >= 1
    assert "set aside" in summary.table()
    aside = json.loads((records_dir(target, tmp_path) / REJECTED).read_text())
    assert str(tvm_ffi.structural_hash(task.workload)) in aside
    func, tuning = TunedSchedules(target, [tmp_path]).schedule(task.workload, task.schedule, task.name)
    assert tuning.status == "default"  # the only faster point is set aside: the default runs
    tvm.ir.assert_structural_equal(func, default.mod["main"])
    fast = convopt.optimize(model, x, lowering="direct", tuning_logs=tmp_path)  # checks against eager
    assert {fast.tuning[n]["status"] for n in task.nodes} == {"default"}
