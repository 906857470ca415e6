"""The TVM backend: IR -> Relax (relax_emit) -> tvm.compile for the CPU (LLVM) or CUDA -> a module that
takes and returns torch tensors through DLPack, without copies.

Targets: "cpu" is the host (LLVM with the host's mcpu and physical core count), "cuda" a CUDA GPU
(the device's arch when one is present, else sm_80), or any TVM target dict / tvm.target.Target.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psutil
import torch
import tvm
from torch import nn

from ..ir.graph import Graph
from .relax_emit import to_relax

def to_tvm(t: torch.Tensor):
    """A torch tensor as a TVM tensor without a copy, unless TVM can't take it: TVM needs contiguous data
    aligned to 64 bytes (tensors over numpy arrays or slices may not be), so those are copied once."""
    t = t.detach().contiguous()
    if t.data_ptr() % 64:
        aligned = torch.empty_like(t)
        aligned.copy_(t)
        t = aligned
    return tvm.runtime.from_dlpack(t)


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or len(os.sched_getaffinity(0)) or 1


# TVM's runtime thread pool assumes SMT and starts hardware_concurrency / 2 workers: one thread on a
# 2-core machine without SMT. It reads TVM_NUM_THREADS when it first starts, so set it before that.
os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores()))

ARTIFACT_LIBRARY = "model.so"
ARTIFACT_META = "meta.json"
ARTIFACT_IR = "graph.ir"


def host_target() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                              "num-cores": physical_cores()})


def cuda_target(arch: str | None = None) -> tvm.target.Target:
    if arch is None and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        arch = f"sm_{major}{minor}"
    return tvm.target.Target({"kind": "cuda", "arch": arch or "sm_80"})


def resolve_target(target: Any) -> tvm.target.Target:
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, dict):
        return tvm.target.Target(target)
    if target == "cpu":
        return host_target()
    if target == "cuda":
        return cuda_target()
    raise ValueError(f"target must be 'torch', 'cpu', 'cuda', a TVM target dict or a tvm.target.Target, not {target!r}")


def compile_graph(graph: Graph, target: tvm.target.Target):
    """The compiled Relax executable for ``graph``."""
    mod = to_relax(graph, target)
    dlight = tvm.s_tir.dlight
    if target.kind.name == "cuda":
        rules = [dlight.gpu.Fallback()]
    else:
        from ..schedules.cpu_fallback import ParallelFallback

        rules = [dlight.cpu.GEMV(), dlight.cpu.Reduction(), ParallelFallback()]
    with target:  # fast math, legalize and fuse, then a default schedule for every PrimFunc without one
        mod = tvm.relax.transform.FastMathTransform()(mod)
        mod = tvm.relax.get_pipeline("zero")(mod)
        mod = dlight.ApplyDefaultSchedule(*rules)(mod)
    return tvm.compile(mod, target=target)


def device_for(target: tvm.target.Target):
    return tvm.cuda(0) if target.kind.name == "cuda" else tvm.cpu(0)


class TVMGraphModule(nn.Module):
    """Runs a compiled executable: flat torch tensors in, a tuple of torch tensors out (DLPack, no copies)."""

    def __init__(self, executable, target: tvm.target.Target):
        super().__init__()
        self.executable = executable
        self.target = target
        self._vm = tvm.relax.VirtualMachine(executable, device_for(target))
        self._main = self._vm["main"]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args = [to_tvm(t) for t in inputs]
        outputs = self._main(*args)
        return tuple(torch.from_dlpack(o) for o in outputs)


def save_artifact(path: str | Path, compiled: TVMGraphModule, graph: Graph, meta: dict) -> Path:
    """A folder that runs without the model's Python code: the library, the signature, the IR."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    compiled.executable.export_library(str(out / ARTIFACT_LIBRARY))
    (out / ARTIFACT_META).write_text(json.dumps({**meta, "target": json.loads(str(compiled.target))}, indent=2))
    (out / ARTIFACT_IR).write_text(str(graph))
    return out


def load_artifact(path: str | Path) -> tuple[TVMGraphModule, dict, str]:
    folder = Path(path)
    missing = [f for f in (ARTIFACT_LIBRARY, ARTIFACT_META, ARTIFACT_IR) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a convopt artifact: missing {', '.join(missing)}")
    meta = json.loads((folder / ARTIFACT_META).read_text())
    target = tvm.target.Target(meta["target"])
    executable = tvm.runtime.load_module(str(folder / ARTIFACT_LIBRARY))
    return TVMGraphModule(executable, target), meta, (folder / ARTIFACT_IR).read_text()
