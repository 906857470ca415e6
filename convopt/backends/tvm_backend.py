"""The TVM backend: IR -> Relax (relax_emit) -> tvm.compile for the CPU (LLVM) or CUDA -> a module that
takes and returns torch tensors through DLPack, without copies.

Every function here takes a resolved ``convopt.target.Target`` (resolve_target runs at the API boundary).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import tvm
from torch import nn

from ..dlpack import to_tvm
from ..ir.graph import Graph
from ..schedules import prefetch
from ..target import Target, resolve_target
from . import torch_fallback
from .nan_semantics import PropagateNaN
from .relax_emit import fallback_nodes, to_relax

ARTIFACT_LIBRARY = "model.so"
ARTIFACT_META = "meta.json"
ARTIFACT_IR = "graph.ir"


def kernel_table(mod: tvm.IRModule) -> dict[str, dict]:
    """PrimFunc name -> what one call of it computes: FLOPs (a conv's direct FLOPs; TVM's estimate for the
    rest), bytes of its arguments (each read or written at least once), its lowering and IR nodes, if a conv,
    and how it was scheduled ("tuning": see tuning/apply.py KernelTuning), if convopt's kernel."""
    table = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        attrs = func.attrs or {}
        if "convopt.flops" in attrs:
            flops = int(attrs["convopt.flops"])
        else:
            try:
                flops = int(tvm.s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": func})))  # not a PrimFunc
            except Exception:  # noqa: BLE001 - TVM can't count some loop nests; the report shows bytes then
                flops = 0
        nbytes = sum(int(np.prod([int(d) for d in buf.shape])) * tvm.runtime.DataType(buf.dtype).bits // 8
                     for buf in func.params if isinstance(buf, tvm.tirx.Buffer))
        table[gv.name_hint] = {"flops": flops, "bytes": nbytes, "lowering": str(attrs.get("convopt.lowering", "")),
                               "nodes": [n for n in str(attrs.get("convopt.nodes", "")).split(",") if n]}
        if "convopt.tuning" in attrs:
            table[gv.name_hint]["tuning"] = json.loads(str(attrs["convopt.tuning"]))
    return table


def prepare_module(graph: Graph, target: Target, records=None, *, fallback: bool = False):
    """(the Relax module of ``graph`` with every op legalized and fused into PrimFuncs by TVM's "zero" pipeline,
    its PyTorch fallbacks). convopt's own kernels are scheduled (``records``: see compile_graph); the PrimFuncs
    TVM generated for the other ops are not yet: ``generated_kernels`` names them (tuning tasks on CUDA,
    where convopt's only kernels are fused blocks', and for the other ops on a CPU: tuning/tasks.py)."""
    mod = to_relax(graph, target, records, fallback=fallback)
    fallbacks = fallback_nodes(mod)
    with target.tvm:  # fast math, legalize and fuse
        mod = tvm.relax.transform.FastMathTransform()(mod)
        mod = tvm.relax.get_pipeline("zero")(mod)
    return mod, fallbacks


def generated_kernels(mod: tvm.IRModule) -> list[str]:
    """The PrimFuncs of a ``prepare_module`` module that no schedule has touched: TVM's own kernels."""
    return [gv.name_hint for gv, func in mod.functions.items()
            if isinstance(func, tvm.tirx.PrimFunc) and not (func.attrs and "tirx.is_scheduled" in func.attrs)]


def default_rules(target: Target) -> list:
    """The dlight rules that schedule TVM's own kernels by default: convopt's CPU rules, dlight's GPU fallback."""
    dlight = tvm.s_tir.dlight
    if target.is_cpu:
        from ..schedules.batch_matmul import BatchMatmul
        from ..schedules.cpu_fallback import BoundedGEMV, CheckedReduction, ParallelFallback, VectorReduction
        from ..schedules.row_reduction import RowReduction

        return [BatchMatmul(target.lanes), BoundedGEMV(), RowReduction(target.lanes), VectorReduction(target.lanes),
                CheckedReduction(), ParallelFallback(target.lanes)]
    return [dlight.gpu.Fallback()]


def default_generated_schedule(target: Target):
    """A generated kernel's default schedule as a function of a Schedule over its workload: the first dlight rule
    of ``default_rules`` that applies, replayed by its trace (the design-space default of a tuning task)."""
    rules = default_rules(target)

    def schedule(sch: tvm.s_tir.Schedule) -> None:
        func = sch.mod["main"]
        for rule in rules:
            space = rule.apply(func, target.tvm, False)
            if space is None:
                continue
            (space.trace if not isinstance(space, list) else space[0].trace).apply_to_schedule(
                sch, remove_postproc=False)
            return

    return schedule


def _schedule_generated_from_records(mod: tvm.IRModule, target: Target, records) -> tvm.IRModule:
    """Each of TVM's own kernels that ``records`` hold (a tuning job's tasks on CUDA, or a CPU job's other ops)
    scheduled by its fastest record where that beats its default; the others are left to the default rules."""
    default = default_generated_schedule(target)
    stale = []
    for name in generated_kernels(mod):
        gv = mod.get_global_var(name)
        workload = tvm.IRModule({"main": mod[gv].with_attr("global_symbol", "main")})
        if not records.holds(workload):
            continue
        func, tuning = records.schedule(workload, default, name)
        if tuning.status in ("untuned", "stale"):  # left to the default rules
            stale += [name] if tuning.status == "stale" else []
            continue
        mod[gv] = (func.without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
                   .with_attr("convopt.tuning", tuning.to_attr()))
    if stale:
        from ..tuning.apply import warn_stale

        warn_stale(stale)
    return mod


def compile_graph(graph: Graph, target: Target, records=None, *, fallback: bool = False):
    """(the compiled Relax executable for ``graph``, its kernel table: see ``kernel_table``, its PyTorch
    fallbacks: function -> IR nodes). ``records`` (tuning/apply.py ``TunedSchedules``): schedule the kernels
    from tuning records where they have one (convopt's own, and TVM's generated ones a job tuned: all of them
    on CUDA, the other ops on a CPU). ``fallback``:
    nodes TVM can't compile run in PyTorch (torch_fallback.py) instead of being refused."""
    mod, fallbacks = prepare_module(graph, target, records, fallback=fallback)
    if records:
        mod = _schedule_generated_from_records(mod, target, records)
    with target.tvm:  # a default schedule for every PrimFunc without one
        mod = tvm.s_tir.dlight.ApplyDefaultSchedule(*default_rules(target))(mod)
        mod = PropagateNaN(mod)  # max/min keep NaN like PyTorch (nan_semantics.py)
    target.configure_runtime()
    return prefetch.compile(mod, target.tvm), kernel_table(mod), fallbacks


class TVMGraphModule(nn.Module):
    """Runs a compiled executable: flat torch tensors in, a tuple of torch tensors out (DLPack, no copies)."""

    def __init__(self, executable, target: Target, kernels: dict[str, dict] | None = None,
                 fallbacks: dict[str, list[str]] | None = None):
        super().__init__()
        self.executable = executable
        self.target = target
        self.kernels = kernels or {}  # PrimFunc name -> flops, bytes, lowering, nodes (kernel_table)
        self.fallbacks = fallbacks or {}  # PyTorch fallback function -> IR nodes (torch_fallback.py)
        # calls and seconds of forward, and of each fallback function during this module's forwards
        self.time = {"forward": [0, 0.0], **{name: [0, 0.0] for name in self.fallbacks}}
        self.vm = tvm.relax.VirtualMachine(executable, target.device())
        self._main = self.vm["main"]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.fallbacks:  # the common case, kept short: a small model's whole VM call is a few us
            start = time.perf_counter()
            result = tuple(torch.from_dlpack(o) for o in self._main(*[to_tvm(t) for t in inputs]))
            self._count("forward", 1, time.perf_counter() - start)
            return result
        before = {name: list(torch_fallback.FALLBACK_TIME[name]) for name in self.fallbacks}
        start = time.perf_counter()
        args = [to_tvm(t) for t in inputs]
        # On a CPU, TVM's pool already has a thread on every core; PyTorch fallback ops running an OpenMP team of
        # their own beside it oversubscribe the cores (each team barrier then waits for a descheduled thread):
        # convnextv2_atto with 12 fallback ops ran 17 ms a call for a while, then 100-236 ms; with PyTorch at one
        # thread while the module runs, 20-25 ms (docs/backends.md)
        threads = torch.get_num_threads() if self.target.is_cpu else 1
        if threads > 1:
            torch.set_num_threads(1)
        try:
            outputs = self._main(*args)
        finally:
            if threads > 1:
                torch.set_num_threads(threads)
        result = tuple(torch.from_dlpack(o) for o in outputs)
        self._count("forward", 1, time.perf_counter() - start)
        for name, (calls, seconds) in before.items():
            now = torch_fallback.FALLBACK_TIME[name]
            self._count(name, now[0] - calls, now[1] - seconds)
        return result

    def _count(self, name: str, calls: int, seconds: float) -> None:
        self.time[name][0] += calls
        self.time[name][1] += seconds


ARTIFACT_FORMAT = "convopt-artifact-2"  # 2: meta.json holds the sha256 of the library and the IR


class ArtifactError(RuntimeError):
    """A saved artifact that can't be loaded here: damaged, mismatched, from another format or machine."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_artifact(path: str | Path, compiled: TVMGraphModule, graph: Graph, meta: dict) -> Path:
    """A folder that runs without the model's Python code: the library, the signature, the IR."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    compiled.executable.export_library(str(out / ARTIFACT_LIBRARY))
    target = compiled.target
    (out / ARTIFACT_IR).write_text(str(graph))
    (out / ARTIFACT_META).write_text(json.dumps({
        "format": ARTIFACT_FORMAT, **meta, "target": json.loads(str(target.tvm)), "target_key": target.key,
        "kernels": compiled.kernels, "torch_fallback": compiled.fallbacks,
        # the library and the IR this meta.json belongs to: load refuses a damaged or swapped file
        "sha256": {name: _digest(out / name) for name in (ARTIFACT_LIBRARY, ARTIFACT_IR)}}, indent=2))
    return out


def _read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / ARTIFACT_META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{folder / ARTIFACT_META} is not valid JSON ({e}); the artifact is damaged: "
                            "save the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ArtifactError(f"{folder} holds artifact format {found!r}; this convopt reads {ARTIFACT_FORMAT!r}: "
                            "optimize() and save() the model again with this version")
    missing = [k for k in ("target", "mode", "inputs", "in_spec", "out_spec", "sha256") if k not in meta]
    if missing:
        raise ArtifactError(f"{folder / ARTIFACT_META} lacks {', '.join(missing)}; the artifact is damaged: "
                            "save the model again")
    # before TVM opens the library: a damaged shared object can crash the process inside dlopen
    for name in (ARTIFACT_LIBRARY, ARTIFACT_IR):
        if _digest(folder / name) != meta["sha256"].get(name):
            raise ArtifactError(f"{folder / name} is not the file this artifact was saved with (its checksum "
                                "differs: damaged, truncated or copied from another artifact); save the model again")
    return meta


def _artifact_target(folder: Path, meta: dict) -> Target:
    try:
        target = resolve_target(tvm.target.Target(meta["target"]))
    except Exception as e:  # noqa: BLE001 - any malformed target is the artifact's fault
        raise ArtifactError(f"{folder / ARTIFACT_META}: unreadable target {meta['target']!r} ({e})") from None
    if not target.runs_here:
        needs = sorted(target.features) if target.is_cpu else [target.name]
        raise ArtifactError(f"{folder} was built for {target.key} (needs {', '.join(needs)}), which this machine "
                            f"can't run{'' if target.is_cpu else ' (no GPU)'}: optimize() and save() the model "
                            "on this machine, or for a target it supports")
    return target


def load_artifact(path: str | Path) -> tuple[TVMGraphModule, dict, str]:
    folder = Path(path)
    missing = [f for f in (ARTIFACT_LIBRARY, ARTIFACT_META, ARTIFACT_IR) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a convopt artifact: missing {', '.join(missing)}")
    meta = _read_meta(folder)
    target = _artifact_target(folder, meta)
    target.configure_runtime()
    ir_text = (folder / ARTIFACT_IR).read_text()
    fallbacks = meta.get("torch_fallback") or {}
    if fallbacks:  # the artifact calls PyTorch for these nodes: register their functions in this process
        from ..ir.parser import parse

        torch_fallback.register_all(parse(ir_text), list(fallbacks))
    try:
        executable = tvm.runtime.load_module(str(folder / ARTIFACT_LIBRARY))
        module = TVMGraphModule(executable, target, meta.get("kernels"), fallbacks)
    except Exception as e:  # noqa: BLE001 - TVM raises InternalError and others for a library it can't load
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{folder / ARTIFACT_LIBRARY} cannot be loaded ({first}); the file is damaged or was "
                            "built for another platform: save the model again") from None
    return module, meta, ir_text
