"""The table of conv lowerings (name -> module following the contract in conv_spec.py) and a builder
that compiles one lowering of one conv on its own, for tests, calibration and per-layer benchmarks.

    kernel = build_kernel("winograd4", spec, weight, bias, activation="relu")
    y = kernel(x)                       # torch in, torch out
    seconds = kernel.time(x)            # median of timed runs
"""

from __future__ import annotations

import importlib
import statistics
import time
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
import tvm
from tvm import te

from .conv_spec import ConvSpec

# name -> module under convopt.schedules; the order is the order of reports
_MODULES = {
    "direct": "direct_conv2d",
    "im2col": "im2col",
    "im2win": "im2win",
    "winograd2": "winograd",
    "winograd4": "winograd",
    "fft": "fft_conv",
}
LOWERINGS = tuple(_MODULES)


class LoweringError(ValueError):
    pass


def lowering(name: str) -> "Lowering":
    """The lowering called ``name`` (a module's functions, with its variant bound)."""
    if name not in _MODULES:
        raise LoweringError(f"unknown lowering {name!r}; convopt has: {', '.join(LOWERINGS)}")
    module = importlib.import_module(f"{__package__}.{_MODULES[name]}")
    return Lowering(name, module)


@dataclass(frozen=True)
class Lowering:
    """One lowering. Modules holding several variants (winograd2/4) take ``variant=name``."""

    name: str
    module: ModuleType

    def _kw(self) -> dict:
        return {"variant": self.name} if getattr(self.module, "VARIANTS", None) else {}

    def supports(self, spec: ConvSpec) -> str | None:
        return self.module.supports(spec, **self._kw())

    def workspace_bytes(self, spec: ConvSpec) -> int:
        return int(self.module.workspace_bytes(spec, **self._kw()))

    def prepare_weight(self, weight: np.ndarray, spec: ConvSpec, lanes: int) -> tuple[np.ndarray, ...]:
        return tuple(np.ascontiguousarray(a, dtype=np.float32)
                     for a in self.module.prepare_weight(weight, spec, lanes, **self._kw()))

    def compute(self, data, *prepared, bias=None, residual=None, spec: ConvSpec, activation="none", lanes=8):
        return self.module.compute(data, *prepared, bias=bias, residual=residual, spec=spec,
                                   activation=activation, lanes=lanes, **self._kw())

    def schedule(self, sch, func_name, target) -> None:
        if target.kind.name == "cuda":
            self.module.schedule_cuda(sch, func_name, target)
        else:
            self.module.schedule_cpu(sch, func_name, target)


def supported_lowerings(spec: ConvSpec) -> dict[str, str | None]:
    """name -> None if it runs ``spec``, else the reason it doesn't."""
    return {name: lowering(name).supports(spec) for name in LOWERINGS}


def host_llvm_target() -> tvm.target.Target:
    from ..backends.tvm_backend import host_target

    return host_target()


class Kernel:
    """One compiled conv: call it with a torch NCHW tensor (and the residual, if built with one)."""

    def __init__(self, name, spec, func, prepared, bias, has_residual, device):
        self.name, self.spec, self._func, self._device = name, spec, func, device
        self._constants = [tvm.runtime.tensor(a, device) for a in prepared]
        self._bias = [tvm.runtime.tensor(bias, device)] if bias is not None else []
        self._out = tvm.runtime.empty(spec.output_shape, "float32", device)
        self.has_residual = has_residual

    def _args(self, x: torch.Tensor, residual: torch.Tensor | None):
        from ..backends.tvm_backend import to_tvm

        args = [to_tvm(x)] + self._constants + self._bias
        if self.has_residual:
            args.append(to_tvm(residual))
        return args + [self._out]

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._func(*self._args(x, residual))
        return torch.from_dlpack(self._out).clone()

    def bound(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """A call with no arguments that runs the kernel on ``x`` into its output buffer (for timing)."""
        args = self._args(x, residual)
        return lambda: self._func(*args)

    def time(self, x: torch.Tensor, residual: torch.Tensor | None = None, *, repeat: int = 7,
             min_seconds: float = 0.02) -> float:
        """Median seconds per call over ``repeat`` runs of back-to-back calls lasting ``min_seconds`` each."""
        call = self.bound(x, residual)
        call()
        runs = []
        for _ in range(repeat):
            count, start = 0, time.perf_counter()
            while True:
                call()
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            runs.append(elapsed / count)
        return statistics.median(runs)


def lower_to_primfunc(name: str, spec: ConvSpec, weight: np.ndarray, *, bias: bool, residual: bool,
                      activation: str, lanes: int):
    """(PrimFunc, prepared weight arrays): data, prepared..., [bias], [residual], output."""
    low = lowering(name)
    reason = low.supports(spec)
    if reason is not None:
        raise LoweringError(f"{name} can't run {spec.describe()}: {reason}")
    prepared = low.prepare_weight(weight, spec, lanes)
    data = te.placeholder((spec.batch, spec.in_channels, spec.height, spec.width), name="data")
    consts = [te.placeholder(a.shape, name=f"w{i}") for i, a in enumerate(prepared)]
    b = te.placeholder((spec.out_channels,), name="bias") if bias else None
    r = te.placeholder(spec.output_shape, name="residual") if residual else None
    out = low.compute(data, *consts, bias=b, residual=r, spec=spec, activation=activation, lanes=lanes)
    args = [data, *consts] + ([b] if b is not None else []) + ([r] if r is not None else []) + [out]
    return te.create_prim_func(args), prepared


def build_kernel(name: str, spec: ConvSpec, weight, bias=None, *, activation: str = "none",
                 residual: bool = False, target: tvm.target.Target | None = None) -> Kernel:
    """Compile lowering ``name`` of ``spec`` with its default schedule for ``target`` (host CPU by default).

    For a CUDA target this builds (nvcc) but the returned Kernel only runs where a GPU is present."""
    from .direct_conv2d import vector_lanes

    target = target or host_llvm_target()
    weight = np.asarray(weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else weight, np.float32)
    if bias is not None:
        bias = np.asarray(bias.detach().cpu().numpy() if isinstance(bias, torch.Tensor) else bias, np.float32)
    lanes = vector_lanes(target) if target.kind.name == "llvm" else 1
    func, prepared = lower_to_primfunc(name, spec, weight, bias=bias is not None, residual=residual,
                                       activation=activation, lanes=lanes)
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
    lowering(name).schedule(sch, "main", target)
    lib = tvm.compile(sch.mod, target=target)
    device = tvm.cuda(0) if target.kind.name == "cuda" else tvm.cpu(0)
    if target.kind.name == "cuda" and not torch.cuda.is_available():
        return BuiltOnly(name, spec, lib)
    return Kernel(name, spec, lib["main"], prepared, bias, residual, device)


@dataclass
class BuiltOnly:
    """A kernel compiled for a device this machine doesn't have."""

    name: str
    spec: ConvSpec
    library: object
