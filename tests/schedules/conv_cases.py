"""Shared by the lowering tests: the targets they build for, the check against torch, a hypothesis strategy
of conv shapes, and the bytes a lowering's PrimFunc allocates.

Every schedule is tested for both SIMD widths on any host: ``host(lanes)`` is this machine's target
scheduled for 8 (AVX2) or 16 (AVX-512) lanes; LLVM runs a 16-lane schedule as two 8-lane halves on an
AVX2 host. ``OTHER_ISAS`` are targets compiled for but not run."""

import numpy as np
import torch
import tvm
from hypothesis import strategies as st

from convopt.numerics import relative_error
from convopt.schedules import tiling
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.lowerings import lowering
from convopt.schedules.kernel import build_kernel, lower_to_primfunc, scheduled_module
from convopt.target import resolve_target

LANES = (8, 16)
HOST = resolve_target("cpu")
OTHER_ISAS = {"avx2": resolve_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2}),
              "avx512": resolve_target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})}
CUDA = resolve_target({"kind": "cuda", "arch": "sm_80"})


TORCH_ACTIVATIONS = {  # the reference of each epilogue activation (convopt.schedules.activations)
    "none": lambda v: v, "relu": torch.relu, "relu6": lambda v: v.clamp(0, 6), "sigmoid": torch.sigmoid,
    "silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda v: torch.nn.functional.gelu(v, approximate="tanh"),
    "hardswish": torch.nn.functional.hardswish, "hardsigmoid": torch.nn.functional.hardsigmoid,
}


def host(lanes: int):
    """This machine's target, scheduled for ``lanes`` fp32 lanes."""
    return HOST.with_lanes(lanes)


def error_against_torch(name: str, spec: ConvSpec, bias: bool, residual: bool, activation: str,
                        seed: int = 0, *, lanes: int, blocked: bool = False) -> float:
    """max|a - b| / max|b| of lowering ``name`` (bias, residual, activation fused) against float64 torch;
    ``blocked``: input, residual and output in channel blocks of ``lanes``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.batch, spec.in_channels, spec.height, spec.width, generator=g)
    w = torch.randn(spec.out_channels, spec.in_per_group, *spec.kernel, generator=g)
    b = torch.randn(spec.out_channels, generator=g) if bias else None
    r = 3 * torch.randn(spec.output_shape, generator=g) if residual else None
    block = lanes if blocked else None
    y = build_kernel(name, spec, w, b, activation=activation, residual=residual, target=host(lanes),
                     in_block=block, out_block=block)(x, r)
    ref = torch.nn.functional.conv2d(x.double(), w.double(), None if b is None else b.double(), spec.stride,
                                     spec.padding, spec.dilation, spec.groups)
    if r is not None:
        ref = ref + r.double()
    ref = TORCH_ACTIVATIONS[activation](ref)
    assert tuple(y.shape) == spec.output_shape
    return relative_error(y, ref)


@st.composite
def conv_specs(draw):
    """Dense, grouped and depthwise (multiplier 1-2) convs, non-square kernels, stride, padding, dilation."""
    if draw(st.booleans()):
        groups = draw(st.integers(1, 12))
        cin, cout = groups, groups * draw(st.sampled_from([1, 2]))
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        cin = groups * draw(st.integers(1, 5))
        cout = groups * draw(st.sampled_from([1, 3, 4, 8, 12, 16]))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    height, width = input_size(draw, kernel, padding, dilation, 9)
    return ConvSpec(draw(st.integers(1, 2)), cin, height, width, cout, kernel, stride, padding, dilation, groups)


def input_size(draw, kernel, padding, dilation, extra: int) -> tuple[int, int]:
    """(height, width) from at least the dilated kernel minus the padding (a non-empty output) to ``extra`` more."""
    reach = [max(1, d * (k - 1) + 1 - 2 * p) for d, k, p in zip(dilation, kernel, padding)]
    return draw(st.integers(reach[0], reach[0] + extra)), draw(st.integers(reach[1], reach[1] + extra))


def lowered_bytes(name: str, spec: ConvSpec, accumulator_block: str, lanes: int) -> tuple[int, int]:
    """(bytes of the PrimFunc's intermediate buffers except the accumulator, bytes allocated once scheduled)."""
    w = np.zeros((spec.out_channels, spec.in_per_group, *spec.kernel), np.float32)
    func, _ = lower_to_primfunc(name, spec, w, bias=True, residual=False, activation="relu", lanes=lanes)
    staged = sum(4 * int(np.prod([int(v) for v in b.shape]))
                 for b in func.body.block.alloc_buffers if b.name != accumulator_block)
    scheduled, _ = scheduled_module(name, spec, w, host(lanes), bias=True, activation="relu")
    S = tvm.s_tir.transform
    mod = tvm.ir.transform.Sequential([S.LowerInitBlock(), S.PlanAndUpdateBufferAllocationLocation(),
                                       S.ConvertBlocksToOpaque(), S.CompactBufferAllocation(),
                                       S.LowerOpaqueBlock()])(scheduled)
    allocated = tvm.s_tir.analysis.calculate_allocated_bytes(mod["main"])["main"]
    return staged, int(allocated.get("global", 0))


# shapes whose workspace_bytes is compared with what the PrimFunc allocates
WORKSPACE_SPECS = [
    ConvSpec(1, 16, 10, 12, 16, (3, 3), (1, 1), (1, 1)),
    ConvSpec(2, 12, 9, 9, 24, (3, 3), (2, 2), (0, 0), (1, 1), groups=3),
    ConvSpec(1, 8, 11, 13, 8, (3, 2), (1, 2), (2, 1), (2, 1), groups=8),
    ConvSpec(1, 16, 8, 8, 32, (1, 1)),
    ConvSpec(1, 16, 8, 8, 32, (1, 1), (2, 2)),
    ConvSpec(1, 3, 32, 32, 16, (7, 7), (2, 2), (3, 3)),
]


def compiles_for(name: str, spec: ConvSpec, target) -> str:
    """Schedule lowering ``name`` of ``spec`` for ``target`` and compile it (not run); the assembly or device code."""
    w = np.zeros((spec.out_channels, spec.in_per_group, *spec.kernel), np.float32)
    mod, _ = scheduled_module(name, spec, w, target, bias=True, residual=True, activation="relu")
    lib = tvm.compile(mod, target=target.tvm)
    return lib.mod.imports[0].inspect_source("") if not target.is_cpu else lib.mod.inspect_source("asm")


def assert_workspace_is_what_is_allocated(name: str, accumulator_block: str, spec: ConvSpec, lanes: int) -> None:
    """The lowering's workspace_bytes is what its PrimFunc stages, and once scheduled it allocates only one
    register tile of accumulators more."""
    staged, allocated = lowered_bytes(name, spec, accumulator_block, lanes)
    assert staged == lowering(name).workspace_bytes(spec, lanes)
    assert 0 < allocated - staged <= 4 * lanes * tiling.accumulators(lanes)
