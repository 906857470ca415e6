"""The im2col and im2win lowerings compile for CUDA (built with nvcc, not run) and for an AVX2 and an
AVX-512 CPU whatever the host: dense, pointwise and depthwise shapes. (The other lowerings' files test
their own shapes.)"""

import pytest

from convopt.schedules.conv_spec import ConvSpec

from .conv_cases import CUDA, OTHER_ISAS, compiles_for

LOWERINGS = ("im2col", "im2win")


@pytest.mark.parametrize("name", LOWERINGS)
def test_cuda_builds(name):
    for spec in (ConvSpec(1, 8, 9, 11, 16, (3, 3), (1, 1), (1, 1)), ConvSpec(1, 16, 7, 6, 24, (1, 1)),
                 ConvSpec(1, 8, 10, 9, 8, (3, 3), (2, 2), (1, 1), groups=8)):
        assert "__global__" in compiles_for(name, spec, CUDA)


@pytest.mark.parametrize("isa", OTHER_ISAS)
@pytest.mark.parametrize("name", LOWERINGS)
def test_compiles_for_both_isas(name, isa):
    for spec in (ConvSpec(1, 32, 9, 11, 32, (3, 3), (1, 1), (1, 1)), ConvSpec(1, 8, 10, 9, 8, (3, 3), groups=8)):
        assert ("zmm" in compiles_for(name, spec, OTHER_ISAS[isa])) == (isa == "avx512")
