"""The token mixer kernel (InceptionNeXt's split, depthwise branches and cat) against PyTorch's depthwise conv of
the merged weight (relative error): channels that are and aren't multiples of the SIMD width, kernels up to 13,
odd maps narrower and wider than a column tile, bands, batch > 1, either layout in and out, for 8 and 16 lanes;
the per-vector tap tables; one parallel loop; and end to end, alone and as the part of an InceptionNeXt block
left unfused."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from torch import nn

import convopt
from convopt.ir import Op
from convopt.ir.layout import to_blocked
from convopt.numerics import relative_error
from convopt.schedules.token_mixer import (TokenMixer, default_bands, io_shapes, prepare_weights, prim_func,
                                           random_arrays)
from convopt.target import resolve_target

GRID = [  # C, H, W, k, batch, bands, parts
    (64, 7, 7, 11, 1, 1, None),                             # InceptionNeXt's stage 4 shape, smaller
    (40, 9, 13, 11, 2, 3, None),                            # batch 2, three bands, a second column tile
    (20, 5, 6, 5, 1, 2, ((6, 1, 1), (6, 3, 3), (8, 1, 5))),  # padded blocks; parts straddling vectors
    (36, 12, 10, 13, 1, 1, ((12, 1, 1), (8, 13, 1), (16, 1, 13))),  # a 13-wide band
]


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("layouts", [(True, True), (False, False), (True, False), (False, True)],
                         ids=["bb", "nn", "bn", "nb"])
@pytest.mark.parametrize("C, H, W, k, batch, bands, parts", GRID)
def test_the_kernel_matches_the_merged_depthwise_conv(C, H, W, k, batch, bands, parts, layouts, lanes):
    block = TokenMixer.of(C, H, W, k, batch)
    rng = np.random.default_rng(C)
    weight, bias = random_arrays(block, rng, parts)
    x = rng.standard_normal((batch, C, H, W)).astype(np.float32)
    in_block, out_block = layouts
    target = resolve_target("cpu")  # the host runs either width
    run = tvm.compile(tvm.IRModule({"main": prim_func(block, lanes, bands, in_block=in_block, out_block=out_block)}),
                      target=target.tvm)["main"]
    out = tvm.runtime.empty(io_shapes(block, lanes, in_block, out_block)[1], "float32", target.device())
    run(tvm.runtime.tensor(to_blocked(x, lanes) if in_block else x),
        *map(tvm.runtime.tensor, prepare_weights(block, weight, bias, lanes=lanes)), out)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), padding=k // 2,
                        groups=C).numpy()
    expected = to_blocked(expected, lanes) if out_block else expected
    assert relative_error(torch.from_numpy(out.numpy()), torch.from_numpy(expected)) <= 1e-5  # pad lanes 0 too


def test_each_vector_computes_only_its_own_parts_taps():
    block = TokenMixer.of(32, 7, 7, 5)
    weight, bias = random_arrays(block, np.random.default_rng(0), ((8, 1, 1), (8, 3, 3), (16, 1, 5)))
    taps = prepare_weights(block, weight, bias, lanes=8)[2]
    assert taps.shape == (4, 1 + 25) and taps.dtype == np.int32
    listed = [sorted(divmod(int(f), 5) for f in row[1:1 + row[0]]) for row in taps]
    assert listed[0] == [(2, 2)]  # the part passed as it is: the centre tap
    assert listed[1] == [(i, j) for i in (1, 2, 3) for j in (1, 2, 3)]  # 3x3
    assert listed[2] == listed[3] == [(2, j) for j in range(5)]  # 1x5
    both = prepare_weights(block, weight, bias, lanes=16)[2]  # a vector of 16 holds the 1x1 and the 3x3 parts
    assert both[0, 0] == 9 and both[1, 0] == 5


def test_one_parallel_loop_and_bands_only_for_too_few_vectors():
    assert prim_func(TokenMixer.of(320, 7, 7, 11), 16, 1, in_block=True, out_block=True).script().count(
        "T.parallel(") == 1
    assert default_bands(TokenMixer.of(320, 7, 7, 11), cores=2, lanes=16) == 1
    assert default_bands(TokenMixer.of(16, 56, 56, 11), cores=2, lanes=16) == 4
    assert default_bands(TokenMixer.of(16, 3, 3, 3), cores=8, lanes=16) == 3  # at most a band a row


class MixerNet(nn.Module):
    """A stem, InceptionNeXt's token mixer (no MLP after it) and a 3x3 conv: the mixer sits between blocked
    convs."""

    def __init__(self, c=48, band=11):
        super().__init__()
        from timm.models.inception_next import InceptionDWConv2d

        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.mixer = InceptionDWConv2d(c, band_kernel_size=band, branch_ratio=0.25)
        self.head = nn.Conv2d(c, 8, 3, padding=1)

    def forward(self, x):
        return self.head(self.mixer(torch.relu(self.stem(x))))


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
def test_a_token_mixer_alone_runs_as_one_kernel_and_matches_eager(lanes):
    torch.manual_seed(0)
    model, x = MixerNet().eval(), torch.randn(1, 3, 10, 9)
    fast = convopt.optimize(model, x, target=resolve_target("cpu").with_lanes(lanes), tuning_logs=False,
                            lowering={"stem": "direct", "head": "direct"})  # (lowerings that run blocked)
    (mixer,) = [n for n in fast.graph.nodes if n.op is Op.FUSED_BLOCK]
    assert mixer.attrs.kind == "token_mixer" and fast.graph.types[mixer.inputs[0]].layout == f"NCHW{lanes}c"
    assert "(fused_token_mixer" in fast.placement()[mixer.name]
    assert not any(n.op in (Op.SPLIT, Op.CAT) for n in fast.graph.nodes)
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-5


def test_an_inception_next_block_left_unfused_keeps_its_token_mixer_fused():
    from timm.models.inception_next import InceptionDWConv2d, MetaNeXtBlock

    torch.manual_seed(0)
    block = MetaNeXtBlock(32, token_mixer=lambda dim, **kw: InceptionDWConv2d(dim, **kw), ls_init_value=0.5)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), block, nn.Conv2d(32, 8, 3)).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 7, 7)
    fast = convopt.optimize(model, x, target="cpu", tuning_logs=False, fuse_blocks={"1.mlp": False})
    assert [n.attrs.kind for n in fast.graph.nodes if n.op is Op.FUSED_BLOCK] == ["token_mixer"]
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-5
