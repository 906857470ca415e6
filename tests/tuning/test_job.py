"""The tuning job: trial shares, a tiny model tuned for a few trials whose records optimize() applies, a job
killed with SIGKILL that resumes without losing or repeating trials, and the CLI."""

import itertools
import os
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
import tvm
from torch import nn

import convopt
from convopt.cli import main
from convopt.ir import Op
from convopt.target import resolve_target
from convopt.tuning.apply import trace_key
from convopt.tuning.job import CONFIRM_ROUNDS, allocate, parse_duration, parse_rpc, tune
from convopt.tuning.records import RECORDS, open_database, records_dir

REPO = Path(__file__).resolve().parents[2]


def test_a_round_fits_the_time_left():
    from convopt.tuning.job import ROUND, round_size

    assert round_size(100, None, None) == ROUND and round_size(5, None, 2.0) == 5  # no budget: what's owed
    assert round_size(100, 10.0, 2.0) == 5 and round_size(100, 1.0, 2.0) == 1  # at least one trial
    assert round_size(3, 100.0, 0.5) == 3 and round_size(100, 100.0, None) == ROUND  # first round: no estimate


def test_trial_shares_follow_cost_within_each_space():
    assert allocate(100, [5, 3, 1, 1], [5, 200, 200, 2]) == [5, 62, 31, 2]  # capped tasks give the rest away
    assert allocate(10, [5, 3, 1, 1], [50, 50, 50, 50]) == [4, 2, 2, 2]  # below the minimum: equal, remainder by cost
    assert allocate(1000, [1, 1], [3, 4]) == [3, 4]
    assert allocate(0, [1.0], [9]) == [0] and allocate(5, [], []) == []


def test_the_estimate_counts_only_the_kernels_the_model_runs():
    from convopt.tuning.job import TaskReport, TuningSummary

    runs = TaskReport("k", "direct", ["c"], 2, 5, default_us=100.0, best_us=80.0)
    other = TaskReport("k'", "im2win", ["c"], 2, 5, default_us=500.0, best_us=50.0, alternative=True)
    summary = TuningSummary("key", Path("."), [runs, other], 10, 1.0, untuned_ms=1.0)
    assert summary.estimated_ms == pytest.approx(1.0 - 2 * 20 / 1000)
    assert "im2win*" in summary.table()


def test_durations_and_rpc_addresses():
    assert parse_duration("15m") == 900 and parse_duration("1.5h") == 5400 and parse_duration(30) == 30
    assert parse_duration("90s") == 90 and parse_duration(None) is None
    with pytest.raises(ValueError, match="15m"):
        parse_duration("soon")
    config = parse_rpc("10.0.0.2:9190:rasp4")
    assert (config.tracker_host, config.tracker_port, config.tracker_key) == ("10.0.0.2", 9190, "rasp4")
    with pytest.raises(ValueError, match="HOST:PORT:KEY"):
        parse_rpc("10.0.0.2:rasp4")


def test_a_tiny_model_tunes_and_optimize_applies_its_records(tiny, tmp_path):
    model, x = tiny
    summary = tune(model, x, trials=6, log_dir=tmp_path, lowering="direct", progress=False)
    assert len(summary.tasks) == 3 and summary.new_trials >= 6
    assert all(t.trials >= 1 and t.best_us <= t.default_us for t in summary.tasks)
    assert summary.untuned_ms > 0 and summary.tuned_ms > 0 and "end to end" in summary.table()
    folder = records_dir(resolve_target("cpu"), tmp_path)
    assert (folder / RECORDS).is_file()

    fast = convopt.optimize(model, x, lowering="direct", tuning_logs=tmp_path)  # checks against eager
    assert set(fast.tuning) == {"conv2d", "conv2d_1", "conv2d_2", "linear"}
    assert {row["status"] for row in fast.tuning.values()} <= {"tuned", "default"}
    assert all(row["default_us"] > 0 and row["speedup"] >= 1 for row in fast.tuning.values())
    assert fast.tuning["conv2d_1"]["kernel"] == fast.tuning["conv2d_2"]["kernel"]
    # the job reports each task's times as optimize() chooses from the folder (RecordIndex: the records in the
    # order measured, each schedule's latest); during the job TVM's database gives them by speed only
    from convopt.tuning.apply import TunedSchedules

    schedules = TunedSchedules(resolve_target("cpu"), [tmp_path])
    reported = {t.name: (t.default_us, t.best_us) for t in summary.tasks}
    for task in _tasks(model, x, resolve_target("cpu")):
        _, tuning = schedules.schedule(task.workload, task.schedule, task.name)
        assert (tuning.default_us, tuning.best_us) == pytest.approx(reported[task.name]), task.name
    untuned = convopt.optimize(model, x, lowering="direct", tuning_logs=False)
    assert untuned.tuning == {}
    with torch.no_grad():
        assert torch.allclose(fast(x), untuned(x), rtol=1e-4, atol=1e-5)


JOB = """
import sys
sys.path.insert(0, {repo!r})
import torch
from convopt.tuning.job import tune
from tests.tuning.conftest import TinyNet
torch.manual_seed(0)
tune(TinyNet().eval(), torch.randn(1, 8, 12, 12), trials=40, log_dir={logs!r}, lowering="direct", progress=False,
     measure_end_to_end=False)
"""


def test_a_job_killed_with_sigkill_resumes_without_losing_or_repeating_trials(tiny, tmp_path):
    target = resolve_target("cpu")
    path = records_dir(target, tmp_path) / RECORDS
    job = subprocess.Popen([sys.executable, "-c", JOB.format(repo=str(REPO), logs=str(tmp_path))],
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path / "job.err", "w"))
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None:
        if path.is_file() and len(path.read_text().splitlines()) >= 5:  # the 3 defaults and some trials
            break
        time.sleep(0.05)
    assert job.poll() is None, f"the job ended before it could be killed: {(tmp_path / 'job.err').read_text()[-2000:]}"
    job.kill()
    job.wait()
    before = path.read_text().splitlines()
    assert len(before) >= 5

    model, x = tiny
    summary = tune(model, x, trials=40, log_dir=tmp_path, lowering="direct", progress=False,
                   measure_end_to_end=False)
    after = path.read_text().splitlines()
    assert after[: len(before) - 1] == before[:-1]  # nothing measured before the kill is lost
    database = open_database(target, tmp_path)
    for task in summary.tasks:
        token = database.commit_workload(next(t for t in _tasks(model, x, target) if t.name == task.name).workload)
        counts = Counter(trace_key(r.trace) for r in database.get_all_tuning_records() if r.workload.same_as(token))
        # each point measured once by the search, plus the side-by-side confirmations of the fastest
        assert max(counts.values()) <= 1 + 2 * CONFIRM_ROUNDS, task.name
    again = tune(model, x, trials=40, log_dir=tmp_path, lowering="direct", progress=False, measure_end_to_end=False)
    assert again.new_trials == 0  # a finished job started again has nothing left to do


def _tasks(model, x, target):
    from convopt.tuning.tasks import extract_tasks

    return extract_tasks(convopt.optimize(model, x, lowering="direct", tuning_logs=False, check=False).graph, target)


def test_cli_tune_then_optimize_reports_the_tuned_kernels(tmp_path, capsys, monkeypatch):
    model_file = tmp_path / "net.py"
    model_file.write_text("from torch import nn\n\ndef build():\n"
                          "    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1))\n")
    spec = f"{model_file}:build"
    monkeypatch.chdir(tmp_path)  # the default log dir is ./tuning_logs, which optimize() reads too
    assert main(["tune", spec, "--input-shape", "1,3,10,10", "--trials", "4", "--lowering", "direct"]) == 0
    out = capsys.readouterr().out
    assert "tuning records: tuning_logs" in out and "new trials" in out
    assert main(["optimize", spec, "--input-shape", "1,3,10,10", "--lowering", "direct"]) == 0
    out = capsys.readouterr().out
    assert "tuning: " in out and "untuned" not in out.split("tuning: ")[1].splitlines()[0]
    assert os.path.isdir(tmp_path / "tuning_logs")
    # the records serve this model: pruning for it keeps them all; for another input shape, nothing applies
    assert main(["prune", spec, "--input-shape", "1,3,12,12", "--lowering", "direct", "--dry-run"]) == 0
    assert "kept 0 workloads" in capsys.readouterr().out
    assert main(["prune", spec, "--input-shape", "1,3,10,10", "--lowering", "direct"]) == 0
    out = capsys.readouterr().out
    assert "kept 2 workloads" in out and "dropped 0 (0 records)" in out


def test_the_lowering_choice_is_tuned_and_optimize_follows_the_measurements(tiny, tmp_path):
    from convopt.schedules.conv_spec import conv_spec_of
    from convopt.tuning.lowering_times import TIMES, read_times

    model, x = tiny
    # a wide margin: every lowering that runs the convs, whatever this machine's profile predicts
    summary = tune(model, x, trials=8, log_dir=tmp_path, progress=False, measure_end_to_end=False,
                   lowering_margin=100)
    assert summary.alternatives >= 1 and len(summary.tasks) > 3  # other lowerings of the 3x3 convs joined
    assert sum(t.alternative for t in summary.tasks) == summary.alternatives
    target = resolve_target("cpu")
    table = read_times(records_dir(target, tmp_path), target)
    assert (records_dir(target, tmp_path) / TIMES).is_file() and table
    fast = convopt.optimize(model, x, tuning_logs=tmp_path)  # checks against eager
    untuned = convopt.optimize(model, x, tuning_logs=False, check=False)
    decided = 0
    for n in fast.graph.nodes:
        if n.op is not Op.CONV2D or not n.attrs.measured_us:
            continue
        decided += 1
        measured = dict(n.attrs.measured_us)
        # (the times are rounded for the record: two lowerings may tie, so the chosen one's time is compared)
        assert min(t for name, t in measured.items() if name.removesuffix("@blocked") == n.attrs.lowering) \
            == min(measured.values())
        variants = table[conv_spec_of(fast.graph, n).key()]
        # (a stem's variants in the table end in "@blocked-output", which its labels don't say)
        assert {name.split("@")[0] for name in measured} <= {v.split("@")[0] for v in variants}
    assert decided >= 2  # the two equal 16->16 convs
    changes = {(node, new) for node, _, new in summary.lowering_changes}
    assert changes == {(n.name, n.attrs.lowering) for n in fast.graph.nodes if n.op is Op.CONV2D
                       and n.attrs.lowering != untuned.graph.node_map[n.name].attrs.lowering}


def test_a_fused_block_is_tuned_over_its_generator_and_optimize_builds_the_recorded_point(tmp_path):
    """The written-out fused kernel's space (schedules/fused_space.py) is enumerated by the job like a
    conv's; optimize() builds the point its records pick, and says so."""
    from tvm.s_tir import meta_schedule as ms

    from tests.passes.test_fuse_blocks import InvertedResidual

    torch.manual_seed(0)
    model = nn.Sequential(InvertedResidual(16, 64, 16), nn.Conv2d(16, 16, 3, padding=1)).eval()
    x = torch.randn(1, 16, 14, 14)
    force = {"0": True}
    summary = tune(model, x, trials=8, log_dir=tmp_path, fuse_blocks=force, lowering="direct", progress=False,
                   measure_end_to_end=False)
    (fused,) = [t for t in summary.tasks if t.kind == "fused_inverted_residual"]
    assert fused.trials >= 2
    fast = convopt.optimize(model, x, tuning_logs=tmp_path, fuse_blocks=force, lowering="direct")  # checks eager
    assert any(n.op is Op.FUSED_BLOCK for n in fast.graph.nodes)
    assert {row["status"] for row in fast.tuning.values()} <= {"tuned", "default"} and len(fast.tuning) == 2

    # a point recorded far faster than the default: optimize() builds that point, and it still matches eager
    target = resolve_target("cpu")
    graph = convopt.optimize(model, x, tuning_logs=False, fuse_blocks=force, lowering="direct", check=False).graph
    (task,) = [t for t in _extract(graph, target) if t.kind == "fused_inverted_residual"]
    database = open_database(target, tmp_path)
    token = database.commit_workload(task.workload)
    measured = {trace_key(r.trace) for r in database.get_top_k(token, 1 << 30)}
    assert len(measured - {trace_key(task.default().trace)}) >= 2  # points of its space besides the default
    from convopt.tuning.job import _times

    # the default's time as optimize() reads it (the median of its records): a job measured while other work
    # ran has records far apart (thread pools that spin on a busy machine), and a point's speed-up is against it
    default_s = _times(database, task)[0] * 1e-6
    point = list(task.points())[-1]  # every knob at its last value
    # faster than every record of the workload, and outnumbering the point's own records (if the job measured
    # it), so the point's median is the fake time whatever the job measured on a noisy machine
    records = database.get_top_k(token, 1 << 30)
    fake_s = min(min(float(s) for s in r.run_secs) for r in records) / 10
    own = sum(trace_key(r.trace) == trace_key(point.trace) for r in records)
    for _ in range(own + 3):
        database.commit_tuning_record(ms.database.TuningRecord(point.trace, token, [fake_s], target.tvm,
                                                               ms.arg_info.ArgInfo.from_prim_func(task.workload["main"])))
    fast = convopt.optimize(model, x, tuning_logs=tmp_path, fuse_blocks=force, lowering="direct")  # checks eager
    row = next(row for row in fast.tuning.values() if row["kernel"] == task.name)
    assert row["status"] == "tuned" and row["speedup"] > 5
    from convopt.tuning.apply import TunedSchedules

    func, tuning = TunedSchedules(target, [tmp_path]).schedule(task.workload, task.schedule, task.name,
                                                               task.generator)
    assert tuning.status == "tuned"
    tvm.ir.assert_structural_equal(func.with_attr("global_symbol", "main"), task.module(point)["main"])
    point_speedup = tuning.speedup

    # a record of another version of the generator (its decisions meant another kernel) is never applied
    from convopt.schedules.fused_space import CANDIDATES, SPACE_VERSION

    foreign = tvm.s_tir.Schedule(task.workload)
    foreign.sample_categorical([SPACE_VERSION + 1], [1.0], decision=0)
    for knob in task.generator.knobs:
        foreign.sample_categorical(list(CANDIDATES[knob]), [1 / len(CANDIDATES[knob])] * len(CANDIDATES[knob]),
                                   decision=1)
    for _ in range(3):
        database.commit_tuning_record(ms.database.TuningRecord(foreign.trace, token, [fake_s / 10], target.tvm,
                                                               ms.arg_info.ArgInfo.from_prim_func(task.workload["main"])))
    func, tuning = TunedSchedules(target, [tmp_path]).schedule(task.workload, task.schedule, task.name,
                                                               task.generator)
    assert tuning.status == "tuned" and tuning.speedup == pytest.approx(point_speedup)  # the point, not the foreign one
    tvm.ir.assert_structural_equal(func.with_attr("global_symbol", "main"), task.module(point)["main"])
    from convopt.tuning.job import _final_times

    default_us, best_us = _final_times(TunedSchedules(target, [tmp_path]), task)  # the job's report, as optimize()
    assert default_us / best_us == pytest.approx(tuning.speedup)
    alone = tmp_path / "foreign"  # records of another version only: stale, the default runs
    foreign_only = open_database(target, alone, create=True)
    token = foreign_only.commit_workload(task.workload)
    foreign_only.commit_tuning_record(ms.database.TuningRecord(
        foreign.trace, token, [default_s], target.tvm, ms.arg_info.ArgInfo.from_prim_func(task.workload["main"])))
    func, tuning = TunedSchedules(target, [alone]).schedule(task.workload, task.schedule, task.name, task.generator)
    assert tuning.status == "stale"
    tvm.ir.assert_structural_equal(func, task.workload["main"])


def _extract(graph, target):
    from convopt.tuning.tasks import extract_tasks

    return extract_tasks(graph, target)


def test_measured_lowerings_the_model_runs_slower_with_are_dropped(tiny, tmp_path, monkeypatch):
    """Kernels measured alone can choose lowerings that make the whole model slower (resnet18 on an Intel
    AVX-512 host: 9.0 ms untuned, 9.7 with them): the job's end-to-end measurement drops those convs' measured
    times, so the cost model chooses their lowerings again and tuning never ends slower than untuned."""
    from convopt.schedules.conv_spec import conv_spec_of
    from convopt.tuning import job
    from convopt.cost.model import variant as model_variant
    from convopt.tuning.lowering_times import read_times, write_times

    model, x = tiny
    target = resolve_target("cpu")
    tune(model, x, trials=4, log_dir=tmp_path, progress=False, measure_end_to_end=False, lowering_margin=1.0)
    untuned = convopt.optimize(model, x, tuning_logs=False, check=False).graph
    folder = records_dir(target, tmp_path)
    table = read_times(folder, target)
    # another lowering of the two equal 16->16 convs measured 1000x faster than theirs: optimize() follows it
    conv = next(n for n in untuned.nodes if n.op is Op.CONV2D and n.scope == "a")
    key = conv_spec_of(untuned, conv).key()
    ((variant, epilogues),) = table[key].items()
    other = "im2win" if conv.attrs.lowering != "im2win" else "direct"
    # every lowering the cost model predicted for the conv measured as fast as its own, each named as it would
    # run there (blocked or not), so the measurements decide whatever the host's profile puts near the best;
    # the other one 1000x faster
    spec, blocked = conv_spec_of(untuned, conv), any(n.endswith("@blocked") for n, _ in conv.attrs.predicted_us)
    times = {model_variant(name.split("@")[0], spec, target.lanes, blocked): epilogues
             for name, _ in conv.attrs.predicted_us}
    times[model_variant(other, spec, target.lanes, blocked)] = {
        e: {**entry, "best_us": entry["best_us"] / 1000} for e, entry in epilogues.items()}
    write_times(folder, target, {key: times})
    switched = convopt.optimize(model, x, tuning_logs=tmp_path).graph
    assert switched.node_map[conv.name].attrs.lowering == other

    def model_ms(fast, args):  # the model as the cost model lowers it runs at 1 ms, with any switch at 2
        lowerings = {n.name: n.attrs.lowering for n in fast.graph.nodes if n.op is Op.CONV2D}
        return 1.0 if all(untuned.node_map[name].attrs.lowering == low for name, low in lowerings.items()) else 2.0

    monkeypatch.setattr(job, "_time_module", model_ms)
    summary = tune(model, x, trials=4, log_dir=tmp_path, progress=False, lowering_margin=1.0)
    assert summary.rejected_switches == (1, 2.0) and summary.tuned_ms == 1.0 and not summary.lowering_changes
    assert "slower than untuned" in summary.table()
    assert key not in read_times(folder, target)  # the other shapes keep theirs
    assert len(read_times(folder, target)) == len(table) - 1
    assert convopt.optimize(model, x, tuning_logs=tmp_path).graph.node_map[conv.name].attrs.lowering \
        == conv.attrs.lowering


def test_a_new_codegen_version_of_a_lowering_makes_its_records_stale(tiny, tmp_path):
    """A record replays the schedule only: when the code made after it changes (Lowering.codegen_version), the
    records tuned under the old code read as stale and the default runs; records made under the new version
    apply. The version mark changes no kernel."""
    import dataclasses

    from convopt.schedules.lowerings import lowering
    from convopt.tuning.apply import TunedSchedules
    from convopt.tuning.job import _commit

    model, x = tiny
    target = resolve_target("cpu")
    task = next(t for t in _tasks(model, x, target) if t.size() > 1)
    current = lowering(task.kind)
    bumped = dataclasses.replace(current, codegen_version=current.codegen_version + 1)
    new_task = dataclasses.replace(task, schedule=lambda sch: bumped.schedule(sch, "main", target))
    tvm.ir.assert_structural_equal(new_task.default().mod["main"], task.default().mod["main"])
    assert trace_key(new_task.default().trace) != trace_key(task.default().trace)
    assert new_task.size() == task.size()

    def records_of(made_by, folder):
        database = open_database(target, folder, create=True)
        token = database.commit_workload(task.workload)
        default, faster = itertools.islice(made_by.points(), 2)
        for sch, seconds in ((default, 2e-6), (faster, 1e-6), (default, 2e-6), (faster, 1e-6)):
            _commit(database, token, sch, types.SimpleNamespace(error_msg=None, run_secs=[seconds]), target)
        return TunedSchedules(target, [folder])

    for made_by, folder in ((task, tmp_path / "old"), (new_task, tmp_path / "new")):
        records = records_of(made_by, folder)
        for reader in (task, new_task):
            func, tuning = records.schedule(task.workload, reader.schedule, task.name)
            if reader is made_by:
                assert tuning.status == "tuned" and tuning.speedup == pytest.approx(2.0)
            else:
                assert tuning.status == "stale"
                tvm.ir.assert_structural_equal(func, reader.default().mod["main"])


def test_records_measured_against_an_older_default_are_stale_and_the_default_runs(tiny, tmp_path, monkeypatch):
    """A changed hand-written schedule leaves records whose default is not today's: nothing measured says
    whether their winner beats the new default, so the default runs, the kernel says "stale", and a warning
    asks for the job to run again."""
    from convopt.tuning import apply
    from convopt.tuning.apply import TunedSchedules
    from convopt.tuning.job import _commit

    monkeypatch.setattr(apply, "_STALE_WARNED", set())  # warned once per process

    model, x = tiny
    target = resolve_target("cpu")
    task = next(t for t in _tasks(model, x, target) if t.size() > 1)
    old_default, *others = list(itertools.islice(task.points(), 3))[1:]  # not today's default
    database = open_database(target, tmp_path, create=True)
    token = database.commit_workload(task.workload)
    # five records each: more than the task's share below, so counting them as trials done would leave
    # nothing owed and nothing confirmed
    # (faster than any real kernel, so the job's re-measurement of its fastest records includes them)
    for sch, seconds in ((old_default, 9e-9), *((o, 5e-9) for o in others)):
        for _ in range(5):
            _commit(database, token, sch, types.SimpleNamespace(error_msg=None, run_secs=[seconds]), target)
    func, tuning = TunedSchedules(target, [tmp_path]).schedule(task.workload, task.schedule, task.name)
    assert tuning.status == "stale" and tuning.speedup is None
    tvm.ir.assert_structural_equal(func, task.default().mod["main"])

    with pytest.warns(UserWarning, match="older version of their default schedule"):
        fast = convopt.optimize(model, x, lowering="direct", tuning_logs=tmp_path)  # checks against eager
    stale = {node for node, row in fast.tuning.items() if row["status"] == "stale"}
    assert stale == set(task.nodes) and "stale" in fast.summary()
    # the job run again owes the stale task its share and measures the old records again beside the new default
    old_keys = {trace_key(sch.trace) for sch in (old_default, *others)}
    summary = tune(model, x, trials=12, log_dir=tmp_path, lowering="direct", progress=False,
                   measure_end_to_end=False, lowering_margin=1.0)
    report = next(t for t in summary.tasks if t.name == task.name)
    assert report.trials > 1 + CONFIRM_ROUNDS  # the new default, searched points, the confirmation
    records = open_database(target, tmp_path).get_top_k(token, 1 << 30)
    remeasured = Counter(trace_key(r.trace) for r in records if trace_key(r.trace) in old_keys)
    assert max(remeasured.values()) >= 5 + CONFIRM_ROUNDS
    _, tuning = TunedSchedules(target, [tmp_path]).schedule(task.workload, task.schedule, task.name)
    assert tuning.status in ("tuned", "default") and tuning.default_us is not None


def test_rule_fused_kernels_with_no_knobs_go_through_a_tuning_job(tmp_path):
    """A squeeze-excite and a token mixer (one-point spaces: schedules/squeeze_excite.py, token_mixer.py) in a
    tuning job: no tasks of their own (nothing to tune), and optimize() with the job's records builds them and
    matches eager."""
    from tests.backends.test_conv_kernels import SqueezeExciteNet
    from tests.schedules.test_token_mixer import MixerNet

    torch.manual_seed(0)
    model = nn.Sequential(SqueezeExciteNet(project=48), nn.Conv2d(8, 3, 1), MixerNet()).eval()
    x = torch.randn(1, 3, 10, 10)
    summary = tune(model, x, trials=4, log_dir=tmp_path, progress=False, measure_end_to_end=False)
    assert summary.tasks and not {"fused_squeeze_excite", "fused_token_mixer"} & {t.kind for t in summary.tasks}
    fast = convopt.optimize(model, x, tuning_logs=tmp_path)  # checks eager
    assert {n.attrs.kind for n in fast.graph.nodes if n.op is Op.FUSED_BLOCK} == {"squeeze_excite", "token_mixer"}
    assert {row["status"] for row in fast.tuning.values()} <= {"tuned", "default", "untuned"}
