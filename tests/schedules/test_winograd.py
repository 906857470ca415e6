"""convopt.schedules.winograd (F(2x2,3x3) and F(4x4,3x3)) against torch.nn.functional.conv2d."""

import shutil

import numpy as np
import pytest
import tvm
from hypothesis import example, given, settings
from hypothesis import strategies as st

from convopt.schedules import winograd
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.kernel import build_kernel, lower_to_primfunc
from convopt.schedules.lowerings import LoweringError, lowering

from .conv_cases import CUDA, HOST, LANES, OTHER_ISAS, compiles_for, error_against_torch

VARIANTS = (winograd.WINOGRAD2.name, winograd.WINOGRAD4.name)

# fp32 transforms: F(2x2) loses up to ~1.2e-5 of max|y| on tiny outputs (1x1 input, padding 2), F(4x4) more
TOLERANCE = {"winograd2": 5e-5, "winograd4": 1e-4}


def _check(variant, n, c, h, w, o, p, bias, residual, activation, seed=0, lanes=8):
    spec = ConvSpec(n, c, h, w, o, (3, 3), padding=(p, p))
    err = error_against_torch(variant, spec, bias, residual, activation, seed, lanes=lanes)
    assert err < TOLERANCE[variant], (spec.describe(), err)


@settings(max_examples=17, deadline=None)  # + the 3 explicit examples
@given(
    variant=st.sampled_from(VARIANTS), lanes=st.sampled_from(LANES),
    n=st.integers(1, 2), c=st.integers(1, 24), o=st.integers(1, 24),
    h=st.integers(1, 20), w=st.integers(1, 20), p=st.integers(0, 2),
    bias=st.booleans(), residual=st.booleans(), activation=st.sampled_from(["none", "relu", "relu6"]),
    seed=st.integers(0, 2**16),
)
@example(variant="winograd4", n=2, c=17, o=9, h=13, w=7, p=1, bias=True, residual=True, activation="relu6", seed=1,
         lanes=16)
@example(variant="winograd2", n=1, c=8, o=16, h=9, w=20, p=0, bias=False, residual=False, activation="none", seed=2,
         lanes=8)
@example(variant="winograd4", n=1, c=1, o=1, h=1, w=2, p=2, bias=True, residual=False, activation="relu", seed=3,
         lanes=16)
def test_matches_torch(variant, n, c, o, h, w, p, bias, residual, activation, seed, lanes):
    if h + 2 * p < 3 or w + 2 * p < 3:
        return  # empty output
    _check(variant, n, c, h, w, o, p, bias, residual, activation, seed, lanes)


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices(m):
    """A^T [(G g G^T) . (B^T d B)] A is the valid 3x3 correlation of one (m+2)^2 patch, in float64."""
    bt, g, at = (np.array(v, np.float64) for v in winograd._MATRICES[m])
    rng = np.random.default_rng(m)
    d, k = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    y = at @ ((g @ k @ g.T) * (bt @ d @ bt.T)) @ at.T
    ref = np.array([[np.sum(d[i:i + 3, j:j + 3] * k) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("spec,reason", [
    (ConvSpec(1, 8, 12, 12, 8, (5, 5), padding=(2, 2)), "3x3 kernel, got 5x5"),
    (ConvSpec(1, 8, 12, 12, 8, (3, 3), stride=(2, 2), padding=(1, 1)), "stride 1, got 2x2"),
    (ConvSpec(1, 8, 12, 12, 8, (3, 3), padding=(2, 2), dilation=(2, 2)), "dilation 1, got 2x2"),
    (ConvSpec(1, 8, 12, 12, 8, (3, 3), padding=(1, 1), groups=2), "groups 2"),
])
def test_refuses(variant, spec, reason):
    got = lowering(variant).supports(spec)
    assert got is not None and reason in got, got
    with pytest.raises(LoweringError, match="winograd"):
        build_kernel(variant, spec, np.zeros((8, 8 // spec.groups, *spec.kernel), np.float32), target=HOST)


@pytest.mark.parametrize("variant", VARIANTS)
def test_supports_dense_3x3(variant):
    assert lowering(variant).supports(ConvSpec(2, 3, 5, 9, 7, (3, 3))) is None


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("spec", [ConvSpec(1, 64, 56, 56, 64, (3, 3), padding=(1, 1)),
                                  ConvSpec(2, 5, 9, 13, 7, (3, 3), padding=(2, 2))])
@pytest.mark.parametrize("lanes", LANES)
def test_workspace_bytes(variant, spec, lanes):
    """The formula equals the intermediate buffers the compute allocates (pad, V, M)."""
    weight = np.zeros((spec.out_channels, spec.in_channels, 3, 3), np.float32)
    func, _ = lower_to_primfunc(variant, spec, weight, bias=False, residual=False, activation="none", lanes=lanes)
    sch = tvm.s_tir.Schedule(func)
    buffers = sch.get(sch.get_sblock("root")).alloc_buffers
    assert sorted(b.name for b in buffers) == sorted([winograd.PAD_BLOCK, winograd.V_BLOCK, winograd.GEMM_BLOCK])
    allocated = sum(4 * int(np.prod([int(s) for s in b.shape])) for b in buffers)
    assert lowering(variant).workspace_bytes(spec, lanes) == allocated
    if spec.height == 56:  # by hand: 58x58 padded input; F(2x2): 784 tiles (786 in M); F(4x4): 196 (198)
        alpha, tiles, gemm_tiles = (4, 784, 786) if variant == "winograd2" else (6, 196, 198)
        assert allocated == 4 * (64 * 58 * 58 + alpha * alpha * (tiles + gemm_tiles) * 64)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_build(variant):
    assert "__global__" in compiles_for(variant, ConvSpec(2, 5, 9, 13, 7, (3, 3), padding=(1, 1)), CUDA)


@pytest.mark.parametrize("isa", OTHER_ISAS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_compiles_for_both_isas(variant, isa):
    """Scheduled and compiled (not run) for an AVX2 and an AVX-512 target, whatever the host."""
    asm = compiles_for(variant, ConvSpec(1, 32, 14, 14, 32, (3, 3), padding=(1, 1)), OTHER_ISAS[isa])
    assert ("zmm" in asm) == (isa == "avx512")
