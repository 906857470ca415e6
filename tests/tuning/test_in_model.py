"""Tuned kernels confirmed inside the model (tuning/in_model.py): the rule, the file, and jobs that set aside
a tuned schedule whose kernel ran slower in the model (optimize() then runs the default) and bring it back when
later jobs find it faster there."""

import json
import types

import pytest
import tvm
import tvm_ffi

import convopt
from convopt.target import resolve_target
from convopt.tuning import job
from convopt.tuning.apply import TunedSchedules
from convopt.tuning.in_model import (KEEP, REJECTED, is_set_aside, observations, observe, read_rejected,
                                     record_observations, set_aside)
from convopt.tuning.records import open_database, records_dir


def _row(status, workload="w1", record="r1"):
    return {"tuning": {"status": status, "default_us": 10.0, "best_us": 8.0, "workload": workload, "record": record}}


def test_each_tuned_kernel_in_both_builds_is_observed():
    kernels = {"slower": _row("tuned", "w1", "r1"), "level": _row("tuned", "w2", "r2"),
               "faster": _row("tuned", "w3", "r3"), "default": _row("default", "w4", None),
               "untuned": {"flops": 1}, "gone": _row("tuned", "w5", "r5")}
    untuned = {"slower": 1.0e-4, "level": 2.0e-4, "faster": 3.0e-4, "default": 1e-4, "untuned": 1e-4}
    tuned = {"slower": 1.2e-4, "level": 2.0e-4, "faster": 2.5e-4, "default": 2e-4, "untuned": 2e-4, "gone": 1e-4}
    observed = observe(untuned, tuned, kernels)
    assert observed == {"w1": {"r1": pytest.approx((100.0, 120.0))}, "w2": {"r2": pytest.approx((200.0, 200.0))},
                        "w3": {"r3": pytest.approx((300.0, 250.0))}}
    assert set_aside(observed_file(observed)) == {"w1": {"r1"}, "w2": {"r2"}}  # not faster: slower or level
    assert observe(untuned, tuned, {}) == {}


def observed_file(observed):
    return {w: {r: {"observations": [list(pair)]} for r, pair in records.items()} for w, records in observed.items()}


def test_the_verdict_is_the_median_of_the_latest_observations():
    assert not is_set_aside({"observations": [[100, 99], [100, 104], [100, 98]]})  # one slow job among three
    assert is_set_aside({"observations": [[100, 101], [100, 104], [100, 98]]})
    assert is_set_aside({"default_us": 1.0, "tuned_us": 2.0})  # a file written before observations were kept
    assert not is_set_aside({}) and not is_set_aside({"observations": []})


def test_the_file_keeps_the_latest_observations_and_a_damaged_one_is_skipped_with_a_warning(tmp_path):
    assert read_rejected(tmp_path) == {}
    record_observations(tmp_path, {"w1": {"r1": (1.0, 2.0)}})
    record_observations(tmp_path, {"w1": {"r2": (1.0, 3.0)}, "w2": {"r3": (2.0, 1.0)}})
    assert set(read_rejected(tmp_path)) == {"w1", "w2"} and set(read_rejected(tmp_path)["w1"]) == {"r1", "r2"}
    assert set_aside(read_rejected(tmp_path)) == {"w1": {"r1", "r2"}}
    for _ in range(KEEP):  # r1 faster in every later job: the first, slower observation ages out
        record_observations(tmp_path, {"w1": {"r1": (1.0, 0.9)}})
    assert observations(read_rejected(tmp_path)["w1"]["r1"]) == [(1.0, 0.9)] * KEEP
    assert set_aside(read_rejected(tmp_path)) == {"w1": {"r2"}}
    (tmp_path / REJECTED).write_text(json.dumps({"w1": {"r1": {"default_us": 1.0, "tuned_us": 2.0}}}))  # old form
    assert set_aside(read_rejected(tmp_path)) == {"w1": {"r1"}}
    record_observations(tmp_path, {"w1": {"r1": (1.0, 0.5)}})  # joins the old pair
    assert observations(read_rejected(tmp_path)["w1"]["r1"]) == [(1.0, 2.0), (1.0, 0.5)]
    (tmp_path / REJECTED).write_text('{"w1": {"r1": ')  # torn
    with pytest.warns(UserWarning, match=REJECTED):
        assert read_rejected(tmp_path) == {}
    (tmp_path / REJECTED).write_text('["r1"]')  # foreign
    with pytest.warns(UserWarning, match="not a mapping"):
        assert read_rejected(tmp_path) == {}
    (tmp_path / REJECTED).write_text('{"w1": {"r1": {"observations": [["a"]]}}}')  # not pairs of numbers
    with pytest.warns(UserWarning, match=REJECTED):
        assert read_rejected(tmp_path) == {}


def test_a_job_sets_aside_a_schedule_slower_in_the_model_until_later_jobs_find_it_faster(tiny, tmp_path,
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
    monkeypatch.setattr(job, "_time_module", lambda fast, args: 1.0)  # the end-to-end check isn't tested here
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

    # later jobs time the set-aside schedule in the model again: faster there twice, the median brings it back
    def faster_in_model(untuned, tuned, example_inputs):
        names = {k for k, row in tuned._compiled.kernels.items() if row.get("tuning", {}).get("status") == "tuned"}
        return {k: 1e-4 for k in names}, {k: 0.5e-4 for k in names}

    monkeypatch.setattr(job, "_kernel_seconds", faster_in_model)
    for still_aside in (True, False):  # ratios [2.0, 0.5] (median 1.25), then [2.0, 0.5, 0.5]
        summary = job.tune(model, x, trials=0, log_dir=tmp_path, lowering="direct", progress=False,
                           lowering_margin=1.0)
        assert (summary.rejected_in_model[0] >= 1) is still_aside
        _, tuning = TunedSchedules(target, [tmp_path]).schedule(task.workload, task.schedule, task.name)
        assert tuning.status == ("default" if still_aside else "tuned")
    fast = convopt.optimize(model, x, lowering="direct", tuning_logs=tmp_path)  # checks against eager
    assert {fast.tuning[n]["status"] for n in task.nodes} == {"tuned"}
