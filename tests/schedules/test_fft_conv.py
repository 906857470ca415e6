"""convopt.schedules.fft_conv against torch.nn.functional.conv2d; its workspace; its CUDA build."""

import re

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convopt.schedules import fft_conv, tiling
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.kernel import scheduled_module

from .conv_cases import CUDA, LANES, OTHER_ISAS, compiles_for, error_against_torch, host


def _check(spec: ConvSpec, *, bias=False, residual=False, activation="none", seed=0, lanes=8):
    err = error_against_torch("fft", spec, bias, residual, activation, seed, lanes=lanes)
    assert err < 1e-4, (spec.describe(), err)


@st.composite
def conv_specs(draw):
    kind = draw(st.sampled_from(["dense", "depthwise", "grouped", "multiplier"]))
    groups = {"dense": 1, "depthwise": draw(st.integers(1, 4)), "grouped": 2,
              "multiplier": draw(st.integers(1, 3))}[kind]
    cpg = {"dense": draw(st.integers(1, 3)), "depthwise": 1, "grouped": draw(st.integers(1, 2)), "multiplier": 1}[kind]
    opg = {"dense": draw(st.integers(1, 4)), "depthwise": 1, "grouped": draw(st.integers(1, 2)), "multiplier": 2}[kind]
    kernel = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    # input at least the dilated kernel minus the padding (a non-empty output)
    h = draw(st.integers(max(1, dilation[0] * (kernel[0] - 1) + 1 - 2 * padding[0]), 18))
    w = draw(st.integers(max(1, dilation[1] * (kernel[1] - 1) + 1 - 2 * padding[1]), 18))
    return ConvSpec(draw(st.integers(1, 2)), groups * cpg, h, w, groups * opg, kernel, stride, padding, dilation, groups)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=conv_specs(), bias=st.booleans(), residual=st.booleans(),
       activation=st.sampled_from(["none", "relu", "relu6"]), seed=st.integers(0, 1000), lanes=st.sampled_from(LANES))
def test_matches_torch(spec, bias, residual, activation, seed, lanes):
    _check(spec, bias=bias, residual=residual, activation=activation, seed=seed, lanes=lanes)


@pytest.mark.parametrize("spec", [
    ConvSpec(1, 8, 28, 28, 8, (13, 13), padding=(6, 6), groups=8),                  # UniRepLKNet-style
    ConvSpec(1, 4, 24, 20, 4, (17, 11), stride=(2, 1), padding=(8, 5), groups=4),   # non-square, stride
    ConvSpec(1, 2, 16, 180, 2, (7, 7), padding=(3, 3), groups=1),                   # long rows (J = 192)
])
@pytest.mark.parametrize("lanes", LANES)
def test_large_kernels(spec, lanes):
    _check(spec, bias=True, activation="relu", lanes=lanes)


def _allocations(mod) -> dict[str, int]:
    """name -> bytes of every buffer the scheduled PrimFunc allocates, once compacted by lowering."""
    passes = tvm.s_tir.transform
    mod = tvm.transform.Sequential([passes.CanonicalizeLoop(), passes.LowerInitBlock(),
                                    passes.PlanAndUpdateBufferAllocationLocation(),
                                    passes.ConvertBlocksToOpaque(), passes.CompactBufferAllocation()])(mod)
    found = re.findall(r"(\w+) = T\.sblock_alloc_buffer\(\(([\d, ]+)\)", mod["main"].script())
    return {name: 4 * int(np.prod([int(v) for v in shape.split(",") if v.strip()])) for name, shape in found}


@pytest.mark.parametrize("spec", [
    ConvSpec(1, 6, 14, 12, 6, (7, 5), padding=(3, 2), groups=6),                # per channel
    ConvSpec(2, 4, 10, 9, 6, (3, 3), stride=(2, 2), padding=(1, 1), groups=2),  # forward over all channels
])
@pytest.mark.parametrize("lanes", LANES)
def test_workspace(spec, lanes):
    w = np.random.default_rng(0).standard_normal((spec.out_channels, spec.in_per_group, *spec.kernel))
    mod, _ = scheduled_module("fft", spec, w.astype(np.float32), host(lanes))
    sizes = _allocations(mod)
    stages = (fft_conv.ROWS_BLOCK, fft_conv.SPEC_BLOCK, fft_conv.MUL_BLOCK, fft_conv.INV_H_BLOCK)
    assert sum(sizes[name] for name in stages) == fft_conv.workspace_bytes(spec, lanes), sizes
    # everything else is a register tile (the GEMMs' accumulators: at most 12 of 16 vector registers, 24 of 32)
    assert all(v <= tiling.fft_vector_budget(lanes) * lanes * 4 for k, v in sizes.items() if k not in stages), sizes


def test_cuda_build():
    spec = ConvSpec(1, 8, 20, 20, 8, (9, 9), padding=(4, 4), groups=8)
    assert "__global__" in compiles_for("fft", spec, CUDA)


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_compiles_for_both_isas(isa):
    """Scheduled and compiled (not run) for an AVX2 and an AVX-512 target, whatever the host."""
    for spec in (ConvSpec(1, 8, 28, 28, 8, (13, 13), padding=(6, 6), groups=8), ConvSpec(1, 4, 16, 16, 6, (7, 7))):
        asm = compiles_for("fft", spec, OTHER_ISAS[isa])
        assert ("zmm" in asm) == (isa == "avx512")
