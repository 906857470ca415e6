"""Rival lowerings of one conv measured side by side: the lowering choice compares times taken together.

A tuning job measures each kernel's schedules in turn, a task at a time, so two lowerings of the same conv
(the model's and an alternative the cost model ranks near it: job._alternatives) are usually measured
minutes apart. This machine is shared, and a neighbour's slow phase lasts seconds: repvgg_a0's 192->192 3x3 at
14x14 kept Winograd F(2,3) at 175 us and F(4,3) at 137 in lowering_times.json, while both measured again
together by the same runner took 140 and 126. A 1.25x error in one of them decides the lowering.

So after the search, each group of rivals (tasks computing the same conv shape, layout variant and epilogue
with different lowerings) has the schedules optimize() would run (each rival's default and its chosen record,
apply.TunedSchedules.chosen_schedule) measured again in one batch, ``apply.RECENT`` rounds, the order reversed
every other round. The records keep those measurements last, so each schedule's time (the median of its latest
``RECENT`` records, apply.py) and the lowering_times.json entries written from them compare measurements
taken within a second of each other.
"""

from __future__ import annotations

from typing import Any, Callable

import tvm

from .apply import RECENT, TunedSchedules
from .lowering_times import kernel_variants
from .tasks import Task, is_conv_lowering


def rival_groups(tasks: list[Task], graphs: dict[str, Any]) -> list[list[Task]]:
    """Groups of conv tasks (two or more lowerings) computing convs of the same shape, layout variant and
    epilogue (lowering_times.kernel_variants), each group once, in the tasks' order."""
    groups: dict[tuple[str, str, str], dict[str, Task]] = {}
    for task in tasks:
        if not is_conv_lowering(task.kind):
            continue
        for key, variant, epilogue in kernel_variants(graphs[task.name], task.kind, task.nodes):
            layout = variant.removeprefix(task.kind)  # "", "@blocked" or "@blocked-output"
            groups.setdefault((key, layout, epilogue), {})[task.name] = task
    unique: dict[tuple[str, ...], list[Task]] = {}
    for members in groups.values():
        if len({task.kind for task in members.values()}) > 1:
            unique.setdefault(tuple(sorted(members)), list(members.values()))
    return list(unique.values())


def running_schedules(task: Task, schedules: TunedSchedules) -> list[tvm.s_tir.Schedule]:
    """The task's default schedule and, when a record wins, the record's: what optimize() chooses between."""
    chosen, _, tuning = schedules.chosen_schedule(task.workload, task.schedule, task.name, task.generator)
    return [chosen] if tuning.status != "tuned" else [task.default(), chosen]


def measure_rivals(groups: list[list[Task]], schedules: TunedSchedules, database, run: Callable[[list], list],
                   commit: Callable, on_batch: Callable[[int], Any] = lambda n: None, rounds: int = RECENT) -> int:
    """Measure each group's running schedules (``running_schedules``) in one batch per round (``run``: modules ->
    MetaSchedule RunnerResults, job.Measurer.run), ``rounds`` rounds, every other one in reverse order, and
    ``commit(database, token, schedule, result)`` each measurement. Returns the measurements made."""
    made = 0
    for group in groups:
        entries = [(database.commit_workload(task.workload), task, sch)
                   for task in group for sch in running_schedules(task, schedules)]
        modules = [task.module(sch) for _, task, sch in entries]
        for round_index in range(rounds):
            order = list(range(len(entries)))[::-1 if round_index % 2 else 1]
            for index, result in zip(order, run([modules[i] for i in order])):
                token, _, sch = entries[index]
                commit(database, token, sch, result)
            made += len(entries)
            on_batch(len(entries))
    return made
