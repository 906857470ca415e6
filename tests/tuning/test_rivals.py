"""Rival lowerings of a conv: grouped by shape, layout and epilogue, and measured in one batch per round."""

import types

import tvm

import convopt

from convopt.schedules.conv_spec import conv_spec_of
from convopt.target import resolve_target
from convopt.tuning.apply import RECENT, KernelTuning
from convopt.tuning.job import job_tasks
from convopt.tuning.rivals import measure_rivals, rival_groups, running_schedules

from .conftest import tiny_graph


def _tasks(tiny, target):
    model, x = tiny
    graph = tiny_graph(model, x, target)
    tasks, graphs, alternatives, _ = job_tasks(graph, model, x, target, lowering_margin=100)
    return tasks, graphs, alternatives


def test_rivals_are_lowerings_of_the_same_convs(tiny):
    target = resolve_target("cpu")
    tasks, graphs, alternatives = _tasks(tiny, target)
    groups = rival_groups(tasks, graphs)
    assert groups and alternatives
    for group in groups:
        kinds = [task.kind for task in group]
        assert len(set(kinds)) == len(kinds) > 1  # one task per lowering
        specs = {conv_spec_of(graphs[t.name], graphs[t.name].node_map[n]).key() for t in group for n in t.nodes}
        assert len(specs) == 1
    grouped = {task.name for group in groups for task in group}
    # every alternative has its rival, the kernel the model runs; the dense kernel has none
    assert {task.name for task, _ in alternatives} <= grouped
    assert not any(task.kind == "dense" for group in groups for task in group)


def test_no_rivals_when_each_conv_has_one_lowering(tiny):
    # the graph runs what the cost model chose (on any host's profile): within 1x of its best, nothing else
    target = resolve_target("cpu")
    model, x = tiny
    graph = convopt.optimize(model, x, target=target, tuning_logs=False, check=False).graph
    tasks, graphs, alternatives, _ = job_tasks(graph, model, x, target, lowering_margin=1)
    assert not alternatives and rival_groups(tasks, graphs) == []


class _NoRecords:
    """What TunedSchedules says of a workload without records: its default runs."""

    def chosen_schedule(self, workload, default, name="kernel", generator=None):
        sch = tvm.s_tir.Schedule(workload)
        default(sch)
        return sch, sch.mod["main"], KernelTuning("untuned")


def test_a_group_is_measured_in_one_batch_a_round_reversed_every_other_round(tiny):
    target = resolve_target("cpu")
    tasks, graphs, _ = _tasks(tiny, target)
    group = rival_groups(tasks, graphs)[0]
    batches, commits = [], []
    database = types.SimpleNamespace(commit_workload=lambda mod: mod)

    def run(mods):
        batches.append(mods)
        return [object() for _ in mods]

    made = measure_rivals([group], _NoRecords(), database, run,
                          lambda db, token, sch, result: commits.append((token, sch)), rounds=RECENT + 1)
    assert made == len(group) * (RECENT + 1) == len(commits)  # no records: each rival's default alone
    assert len(batches) == RECENT + 1 and all(len(b) == len(group) for b in batches)
    first = [m.script() for m in batches[0]]
    assert [m.script() for m in batches[1]] == first[::-1]  # the other order
    assert {id(token) for token, _ in commits} == {id(task.workload) for task in group}
    # what each commit names is its own task's default schedule
    for token, sch in commits:
        task = next(t for t in group if t.workload is token)
        assert sch.mod.script() == task.default().mod.script()


def test_the_running_schedules_are_the_default_and_the_chosen_record(tiny):
    target = resolve_target("cpu")
    tasks, graphs, _ = _tasks(tiny, target)
    task = rival_groups(tasks, graphs)[0][0]
    assert [s.mod.script() for s in running_schedules(task, _NoRecords())] == [task.default().mod.script()]

    recorded = task.default()  # a record's schedule (here, the default's trace replayed)

    class Chosen:
        def chosen_schedule(self, workload, default, name="kernel", generator=None):
            return recorded, recorded.mod["main"], KernelTuning("tuned", 10.0, 5.0)

    default, chosen = running_schedules(task, Chosen())
    assert chosen is recorded and default.mod.script() == task.default().mod.script()
