"""Tuning tasks: the distinct kernels of a model compiled for a target, and each one's design space.

A task of convopt's kernels is one PrimFunc of the model's Relax module as ``to_relax`` emits it, before
scheduling: the workload its records are keyed by (conv_kernels.workload; equal convs of a model share one
PrimFunc, so identical layers are one task whose ``weight`` counts its calls per model run). Its design space
is its default schedule: the schedules write their tunable choices (register tiles) as MetaSchedule samples
whose default decisions are the hand-written heuristic, so the untuned code is the space's default trace.

A task of TVM's own kernels (kind ``GENERATED``: every kernel on CUDA, where convopt's only kernels are the
fused blocks'; the other ops on a CPU) is a PrimFunc TVM's "zero" pipeline legalized and
fused (tvm_backend.prepare_module); its default is the dlight rule compile_graph applies, its space
MetaSchedule's default rules for the target, searched rather than enumerated (job.py). The CUDA fused block
kernel's space (schedules/fused_block_cuda.py: sampled perfect tiles) is searched too.

The CPU fused block kernels are written out, not scheduled: their space is their generator's parameters,
sampled like the schedules' choices (schedules/fused_space.py), and ``Task.generator`` builds the kernel a
point's decisions name (``Task.module``: what a measurement builds). Their spaces are small and enumerated,
points that build the same kernel once.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import tvm
import tvm_ffi

from ..backends.conv_kernels import default_schedule, workload
from ..backends.relax_emit import emit
from ..ir.graph import Graph
from ..schedules import fused_block_cuda
from ..schedules.fused_space import Space
from ..target import Target
from .apply import trace_key


GENERATED = "generated"  # the kind of a task that is one of TVM's own kernels (searched, not enumerated)
SEARCHED_SIZE = 1 << 20  # a searched space's size for the job's trial shares: more than any budget
# kinds whose spaces are searched, not enumerated: TVM's kernels, and the CUDA fused blocks (sampled perfect
# tiles: too many points; on a CPU the fused kernels' spaces are enumerated: Task.searched)
SEARCHED_KINDS = (GENERATED, *("fused_" + kind for kind in fused_block_cuda.KINDS))


def is_conv_lowering(kind: str) -> bool:
    """Whether a task of this kind is one lowering of convs (not a dense layer, a fused block or TVM's kernel)."""
    return kind not in ("dense", GENERATED) and not kind.startswith("fused_")


@dataclass
class Task:
    name: str  # the PrimFunc in the model's module, e.g. "convopt_direct_conv2d_3"
    kind: str  # the conv's lowering, "dense", "fused_<block kind>" (CUDA), or GENERATED (TVM's kernels)
    workload: tvm.IRModule  # the unscheduled PrimFunc as "main"
    weight: int  # calls per model run
    nodes: list[str]  # the IR nodes it computes
    flops: int  # per call
    schedule: Callable[[tvm.s_tir.Schedule], None]  # the default schedule, and the design space
    alternative: bool = False  # a lowering the model doesn't run yet, measured to tune the lowering choice
    # a kernel written out rather than scheduled (the CPU fused blocks): its generator's space, which builds
    # the kernel a point's decisions name (schedules/fused_space.py)
    generator: Space | None = None

    @property
    def searched(self) -> bool:
        """A space too large to enumerate (TVM's own kernels, the CUDA fused block): searched instead."""
        return self.kind in SEARCHED_KINDS and self.generator is None

    def module(self, sch: tvm.s_tir.Schedule) -> tvm.IRModule:
        """The kernel at the point ``sch`` is, as the one-function module ("main") a measurement builds."""
        if self.generator is None:
            return sch.mod
        return tvm.IRModule({"main": self.generator.realize(sch).with_attr("global_symbol", "main")})

    def space(self, target: Target):
        """The MetaSchedule space generator. convopt's kernels (the CUDA fused blocks' too, searched rather
        than enumerated): the default schedule with its samples, plus
        MetaSchedule's postprocessors and mutators for the target (a bare callable would get no mutators).
        TVM's own kernels: MetaSchedule's default rules for the target (multi-level tiling, thread binding on
        CUDA, parallel/vectorize/unroll on CPU)."""
        from tvm.s_tir import meta_schedule as ms

        if self.generator is not None:  # its points are built, not scheduled: MetaSchedule can't search them
            raise ValueError(f"task {self.name}: a written-out kernel's space is enumerated (Task.points)")
        kind = "llvm" if target.is_cpu else "cuda"
        if self.kind == GENERATED:
            return ms.space_generator.PostOrderApply(sch_rules=kind, postprocs=kind, mutator_probs=kind)
        return ms.space_generator.ScheduleFn(self.schedule, sch_rules=[], postprocs=kind, mutator_probs=kind)

    def default(self) -> tvm.s_tir.Schedule:
        """The default schedule (the space's default decisions) applied to the workload."""
        sch = tvm.s_tir.Schedule(self.workload)
        self.schedule(sch)
        return sch

    def size(self) -> int:
        """Points in the design space (1: nothing to tune; a searched space counts as ``SEARCHED_SIZE``)."""
        if self.searched:
            return SEARCHED_SIZE
        if self.generator is not None:  # points that build the same kernel count once
            return len({self.generator.kernel_key(trace) for trace in self._traces()})
        size = 1
        for _, count, _ in _choices(self.default().trace):
            size *= count
        return size

    def _traces(self) -> Iterator:
        """The traces of every combination of the space's decisions, nearest the default first (fewest changed
        decisions, then the smallest moves)."""
        trace = self.default().trace
        choices = _choices(trace)

        def distance(decisions):
            moves = [abs(d - default) for d, (_, _, default) in zip(decisions, choices)]
            return sum(1 for m in moves if m), sum(moves)

        for decisions in sorted(itertools.product(*(range(count) for _, count, _ in choices)), key=distance):
            point = trace
            for (inst, _, _), decision in zip(choices, decisions):
                point = point.with_decision(inst, decision, remove_postproc=True)
            yield point

    def points(self, skip: set[str] = frozenset()) -> Iterator[tvm.s_tir.Schedule]:
        """Every point of the space as a schedule, nearest the default first: what an exhaustive search
        measures when the space fits in its trial budget; points whose trace key (apply.trace_key) is in
        ``skip`` are left out before they are made. A written-out kernel's points that build a kernel an
        earlier point built are left out, and so are those its generator can't build."""
        kernels = set()  # a written-out kernel's points: the kernels (their tiles) made or skipped so far
        for point in self._traces():
            key = self.generator.kernel_key(point) if self.generator is not None else None
            if key is not None and key in kernels:
                continue
            sch = tvm.s_tir.Schedule(self.workload)
            try:
                point.apply_to_schedule(sch, remove_postproc=True)
                if trace_key(sch.trace) in skip:
                    kernels.add(key)  # measured already: its kernel too
                    continue
                if self.generator is not None:
                    self.generator.realize(sch)
            except Exception as e:  # noqa: BLE001 - a combination the schedule or generator can't make: not a point
                logging.getLogger(__name__).info("%s: skipped point %s: %s", self.name, point, e)
                continue
            kernels.add(key)
            yield sch


def _choices(trace) -> list[tuple[object, int, int]]:
    """The categorical samples of ``trace``: (its instruction, number of candidates, decision)."""
    return [(inst, len(inst.attrs[0]), int(trace.decisions[inst])) for inst in trace.insts
            if inst.kind.name == "SampleCategorical"]


def extract_tasks(graph: Graph, target: Target) -> list[Task]:
    """The tasks of ``graph`` (after the pass pipeline, with its lowerings and layouts) on ``target``, in
    the order of the module: convopt's kernels (on a CPU its convs, dense layers and fused blocks, the last
    written out with their generator's parameters as the space: schedules/fused_space.py; on CUDA the fused
    blocks), and on CUDA TVM's kernels for the rest of the graph (``generated_tasks``). A written-out kernel whose
    space has no knobs (the squeeze-excite's, the token mixer's) is one point, its default: nothing to tune, and
    no task (the token mixer's tap lists index its weights: random arguments would read out of bounds)."""
    mod, kernels = emit(graph, target)
    own = [Task(name, use.kind, workload(mod, name), len(use.nodes), list(use.nodes), use.flops,
                default_schedule(use, target), generator=use.space) for name, use in kernels.items()
           if use.space is None or use.space.knobs]
    return own if target.is_cpu else own + generated_tasks(graph, target)


def generated_tasks(graph: Graph, target: Target) -> list[Task]:
    """TVM's own kernels of ``graph`` on ``target`` (the PrimFuncs its "zero" pipeline legalizes and fuses,
    as compile_graph builds them), one task per distinct workload, weighted by its calls per run; the
    default schedule is the dlight rule compile_graph applies, the space MetaSchedule's rules for the target."""
    from ..backends.tvm_backend import default_generated_schedule, generated_kernels, kernel_table, prepare_module

    mod, _ = prepare_module(graph, target)
    calls = _calls(mod)
    default = default_generated_schedule(target)
    tasks: dict[str, Task] = {}
    hashes: dict[int, str] = {}
    for name in generated_kernels(mod):
        func = mod[name]
        work = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        digest = tvm_ffi.structural_hash(work)  # equal kernels of the model: one task
        if digest in hashes and tvm_ffi.structural_equal(tasks[hashes[digest]].workload, work):
            tasks[hashes[digest]].weight += calls.get(name, 1)
            continue
        hashes[digest] = name
        tasks[name] = Task(name, GENERATED, work, calls.get(name, 1), [],
                           kernel_table(work)["main"]["flops"], default)
    return list(tasks.values())


def _calls(mod: tvm.IRModule) -> dict[str, int]:
    """PrimFunc name -> how often the module's main calls it (call_tir)."""
    counts: dict[str, int] = {}

    def visit(expr):
        if isinstance(expr, tvm.relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            counts[expr.args[0].name_hint] = counts.get(expr.args[0].name_hint, 0) + 1

    tvm.relax.analysis.post_order_visit(mod["main"], visit)
    return counts
