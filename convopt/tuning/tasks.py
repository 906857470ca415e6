"""Tuning tasks: the distinct kernels of convopt's in a model compiled for a target, and each one's design space.

A task is one PrimFunc of the model's Relax module as ``to_relax`` emits it, before scheduling: the
workload its records are keyed by (conv_kernels.workload; equal convs of a model share one PrimFunc, so
identical layers are one task whose ``weight`` counts its calls per model run). Its design space is its
default schedule: the schedules write their tunable choices (register tiles) as MetaSchedule samples whose
default decisions are the hand-written heuristic, so MetaSchedule's evolutionary search mutates exactly
those decisions, and the untuned code is the space's default trace.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import tvm

from ..backends.conv_kernels import default_schedule, workload
from ..backends.relax_emit import emit
from ..ir.graph import Graph
from ..target import Target


@dataclass
class Task:
    name: str  # the PrimFunc in the model's module, e.g. "convopt_direct_conv2d_3"
    kind: str  # the conv's lowering, or "dense"
    workload: tvm.IRModule  # the unscheduled PrimFunc as "main"
    weight: int  # calls per model run
    nodes: list[str]  # the IR nodes it computes
    flops: int  # per call
    schedule: Callable[[tvm.s_tir.Schedule], None]  # the default schedule, and the design space
    alternative: bool = False  # a lowering the model doesn't run yet, measured to tune the lowering choice

    def space(self, target: Target):
        """The MetaSchedule space generator: the default schedule with its samples, plus MetaSchedule's
        postprocessors and mutators for the target (a bare callable would get no mutators)."""
        from tvm.s_tir import meta_schedule as ms

        kind = "llvm" if target.is_cpu else "cuda"
        return ms.space_generator.ScheduleFn(self.schedule, sch_rules=[], postprocs=kind, mutator_probs=kind)

    def default(self) -> tvm.s_tir.Schedule:
        """The default schedule (the space's default decisions) applied to the workload."""
        sch = tvm.s_tir.Schedule(self.workload)
        self.schedule(sch)
        return sch

    def size(self) -> int:
        """Points in the design space (1: nothing to tune)."""
        size = 1
        for _, count, _ in _choices(self.default().trace):
            size *= count
        return size

    def points(self) -> Iterator[tvm.s_tir.Schedule]:
        """Every point of the space as a schedule, nearest the default first (fewest changed decisions, then
        the smallest moves): what an exhaustive search measures when the space fits in its trial budget."""
        trace = self.default().trace
        choices = _choices(trace)

        def distance(decisions):
            moves = [abs(d - default) for d, (_, _, default) in zip(decisions, choices)]
            return sum(1 for m in moves if m), sum(moves)

        for decisions in sorted(itertools.product(*(range(count) for _, count, _ in choices)), key=distance):
            point = trace
            for (inst, _, _), decision in zip(choices, decisions):
                point = point.with_decision(inst, decision, remove_postproc=True)
            sch = tvm.s_tir.Schedule(self.workload)
            try:
                point.apply_to_schedule(sch, remove_postproc=True)
            except tvm.TVMError as e:  # a combination the schedule can't make: not a point of the space
                logging.getLogger(__name__).info("%s: skipped decisions %s: %s", self.name, decisions, e)
                continue
            yield sch


def _choices(trace) -> list[tuple[object, int, int]]:
    """The categorical samples of ``trace``: (its instruction, number of candidates, decision)."""
    return [(inst, len(inst.attrs[0]), int(trace.decisions[inst])) for inst in trace.insts
            if inst.kind.name == "SampleCategorical"]


def extract_tasks(graph: Graph, target: Target) -> list[Task]:
    """The tasks of ``graph`` (after the pass pipeline, with its lowerings and layouts) on ``target``, in
    the order of the module. Empty for targets where convopt emits no kernels of its own (CUDA); kernels
    written out without a schedule (the fused block kernel) have no design space and are not tasks."""
    mod, kernels = emit(graph, target)
    return [Task(name, use.kind, workload(mod, name), len(use.nodes), list(use.nodes), use.flops,
                 default_schedule(use, target)) for name, use in kernels.items() if use.schedule is not None]
