"""One conv lowering compiled on its own, for tests, calibration and per-layer benchmarks:

    kernel = build_kernel("winograd4", spec, weight, bias, activation="relu", target=resolve_target("cpu"))
    y = kernel(x)                       # torch in, torch out (NCHW)
    seconds = kernel.time(x)            # median of timed runs

``in_block`` / ``out_block`` = b build the kernel for blocked input / output (and residual) tensors,
[N, C/b, H, W, b] (ir/layout.py); the Kernel still takes and returns NCHW torch tensors, blocking them
outside the kernel (and outside the timed calls).
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import tvm
from tvm import te

from ..dlpack import to_tvm
from ..ir.layout import blocked_layout, padded_channels, stored_shape
from ..target import Target
from .conv_spec import ConvSpec, nchw, pad_to_blocks
from . import prefetch
from .lowerings import LoweringError, lowering


def _layout(block: int | None) -> str:
    return blocked_layout(block) if block else ""


def to_layout(t: torch.Tensor, block: int | None) -> torch.Tensor:
    """An NCHW tensor stored as [N, ceil(C/b), H, W, b] (contiguous, pad lanes zero: ir/layout.py); ``t``
    itself when ``block`` is None."""
    if not block:
        return t
    n, c, h, w = t.shape
    padded = padded_channels(c, block)
    if padded != c:
        t = torch.cat([t, t.new_zeros(n, padded - c, h, w)], dim=1)
    return t.reshape(n, padded // block, block, h, w).permute(0, 1, 3, 4, 2).contiguous()


def from_layout(t: torch.Tensor, block: int | None, channels: int | None = None) -> torch.Tensor:
    """The NCHW tensor of a blocked one: its first ``channels`` (default: all, pad lanes included)."""
    if not block:
        return t
    n, cb, h, w, b = t.shape
    return t.permute(0, 1, 4, 2, 3).reshape(n, cb * b, h, w)[:, :channels]


def cold_copies(footprint: int, target: Target) -> int:
    """Copies of a kernel's activations to cycle through so that together they exceed every core's L2 twice
    over: each call then finds its input in L3 (or memory), as a layer does in a model, never in its own L2
    (calibration times kernels so: a small conv timed on the same tensors again and again runs from L2, 3x as
    fast as the same conv between its neighbours in a model)."""
    l2 = target.caches.get("L2", 1 << 20) * target.cores
    return max(1, min(64, -(-2 * l2 // max(footprint, 1))))


class Kernel:
    """One compiled conv: call it with a torch NCHW tensor (and the residual, if built with one)."""

    def __init__(self, name, spec, func, prepared, bias, has_residual, device, in_block=None, out_block=None):
        self.name, self.spec, self._func, self._device = name, spec, func, device
        self.in_block, self.out_block = in_block, out_block
        self._constants = [tvm.runtime.tensor(a, device) for a in prepared]
        self._bias = [tvm.runtime.tensor(bias, device)] if bias is not None else []
        self._out = tvm.runtime.empty(stored_shape(spec.output_shape, _layout(out_block)), "float32", device)
        self.has_residual = has_residual

    def _args(self, x: torch.Tensor, residual: torch.Tensor | None):
        x = to_layout(x, self.in_block)
        args = [to_tvm(x)] + self._constants + self._bias
        if self.has_residual:
            args.append(to_tvm(to_layout(residual, self.out_block)))
        return args + [self._out]  # (a DLPack tensor keeps its torch tensor alive)

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._func(*self._args(x, residual))
        return from_layout(torch.from_dlpack(self._out), self.out_block, self.spec.out_channels).clone()

    def bound(self, x: torch.Tensor, residual: torch.Tensor | None = None, *, copies: int = 1,
              weight_copies: int = 1):
        """A call with no arguments that runs the kernel on ``x`` into its output buffer (for timing).

        ``copies`` > 1: each call takes the next of that many copies of the input, residual and output in
        turn, so that a small conv's tensors are not in the core's cache from the call before, as in a model,
        where the layer before has just written them (from the other cores' caches too). ``weight_copies``
        > 1 (instead): each call takes the next of that many copies of the packed weights and bias, the
        activations the same, so that enough copies find the weights in no cache, as in a model whose
        weights exceed the last-level cache (cost/weight_stream.py)."""
        if weight_copies > 1 and copies > 1:
            raise ValueError("copies of the activations or of the weights, not both")
        if weight_copies > 1:
            args = self._args(x, residual)
            constants = len(self._constants) + len(self._bias)
            arg_sets = [[args[0], *(tvm.runtime.tensor(c.numpy(), self._device) for c in args[1:1 + constants]),
                         *args[1 + constants:]] for _ in range(weight_copies)]
            turn = itertools.cycle(arg_sets)
            return lambda: self._func(*next(turn))
        if copies <= 1:
            args = self._args(x, residual)
            return lambda: self._func(*args)
        arg_sets = []
        for _ in range(copies):
            args = self._args(x.clone(), None if residual is None else residual.clone())
            arg_sets.append(args[:-1] + [tvm.runtime.empty(self._out.shape, "float32", self._device)])
        turn = itertools.cycle(arg_sets)
        return lambda: self._func(*next(turn))

    def footprint_bytes(self) -> int:
        """Bytes of the tensors a call reads and writes that change between calls in a model: the input,
        the residual and the output (weights and bias stay)."""
        spec = self.spec
        elements = spec.batch * spec.in_channels * spec.height * spec.width
        elements += (1 + self.has_residual) * spec.batch * spec.out_channels * spec.out_height * spec.out_width
        return 4 * elements

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


@dataclass
class BuiltOnly:
    """A kernel compiled for a device this machine doesn't have."""

    name: str
    spec: ConvSpec
    library: object


def lower_to_primfunc(name: str, spec: ConvSpec, weight: np.ndarray, *, bias: bool, residual: bool,
                      activation: str, lanes: int, in_block: int | None = None, out_block: int | None = None):
    """(PrimFunc, prepared weight arrays): data, prepared..., [bias], [residual], output."""
    low = lowering(name)
    reason = low.supports(spec)
    if reason is not None:
        raise LoweringError(f"{name} can't run {spec.describe()}: {reason}")
    prepared = low.prepared(weight, spec, lanes)
    if out_block and not low.writes_blocked:
        raise LoweringError(f"{name} writes NCHW outputs only")
    in_shape = (spec.batch, spec.in_channels, spec.height, spec.width)
    data = te.placeholder(stored_shape(in_shape, _layout(in_block)), name="data")
    consts = [te.placeholder(a.shape, name=f"w{i}") for i, a in enumerate(prepared)]
    b = te.placeholder((spec.out_channels,), name="bias") if bias else None
    r = te.placeholder(stored_shape(spec.output_shape, _layout(out_block)), name="residual") if residual else None
    blocked = {"out_block": out_block} if out_block else {}
    out = low.compute(nchw(data, spec.in_channels), *consts, bias=b, residual=r, spec=spec, activation=activation, lanes=lanes,
                      **blocked)
    args = [data, *consts] + ([b] if b is not None else []) + ([r] if r is not None else []) + [out]
    return te.create_prim_func(args), prepared


def scheduled_module(name: str, spec: ConvSpec, weight: np.ndarray, target: Target, *, bias: bool = False,
                     residual: bool = False, activation: str = "none", in_block: int | None = None,
                     out_block: int | None = None):
    """(IRModule with the scheduled PrimFunc "main", prepared weight arrays) for ``target``."""
    func, prepared = lower_to_primfunc(name, spec, weight, bias=bias, residual=residual, activation=activation,
                                       lanes=target.lanes, in_block=in_block, out_block=out_block)
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
    lowering(name).schedule(sch, "main", target)
    return sch.mod, prepared


def _numpy(t) -> np.ndarray | None:
    if t is None:
        return None
    return np.asarray(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t, np.float32)


def build_kernel(name: str, spec: ConvSpec, weight, bias=None, *, target: Target, activation: str = "none",
                 residual: bool = False, in_block: int | None = None, out_block: int | None = None
                 ) -> Kernel | BuiltOnly:
    """Compile lowering ``name`` of ``spec`` with its default schedule for ``target``.

    For a target this machine can't run (CUDA without a GPU, another CPU's ISA) this compiles and
    returns ``BuiltOnly``."""
    weight, bias = _numpy(weight), _numpy(bias)
    # channels that don't fill whole blocks: the kernel computes the conv padded to them (its pad lanes zero)
    padded, weight, bias = pad_to_blocks(spec, weight, bias, in_block, out_block)
    mod, prepared = scheduled_module(name, padded, weight, target, bias=bias is not None, residual=residual,
                                     activation=activation, in_block=in_block, out_block=out_block)
    target.configure_runtime()
    lib = prefetch.compile(mod, target.tvm)
    if not target.runs_here:
        return BuiltOnly(name, spec, lib)
    return Kernel(name, spec, lib["main"], prepared, bias, residual, target.device(), in_block, out_block)
