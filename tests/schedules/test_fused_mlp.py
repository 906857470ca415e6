"""The fused pointwise MLP kernel against eager PyTorch (relative error) over a grid of shapes: channels that
are and aren't multiples of the SIMD width, expansion ratios, odd maps, batch > 1, with and without the
residual, the activations it supports, for 8 and 16 lanes; and each of its tensors in either layout."""

import numpy as np
import pytest
import torch
import tvm
from torch import nn

import convopt
from convopt.ir import Op
from convopt.ir.layout import to_blocked
from convopt.numerics import relative_error
from convopt.schedules.fused_mlp import PointwiseMLP, default_bands, io_shapes, prepare_weights, prim_func
from convopt.target import resolve_target

from ..passes.test_fuse_blocks import ChannelMLP, ResidualMLP


def _model(*blocks):
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, blocks[0].fc1.in_channels, 3, padding=1), *blocks).eval()


GRID = [  # (c, e, act, residual, input shape)
    (16, 64, nn.GELU, True, (1, 3, 14, 14)),
    (24, 96, nn.ReLU, True, (2, 3, 9, 13)),       # batch 2, odd map, C a multiple of 8 but not of 16
    (12, 40, nn.SiLU, False, (1, 3, 7, 7)),       # channels below one vector, no residual
    (32, 80, nn.Hardswish, True, (1, 3, 5, 17)),  # E not a multiple of 16
    (48, 144, nn.ReLU, True, (1, 3, 6, 10)),      # 3 and 9 vectors of 16: tiles of three
]


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("c, e, act, residual, shape", GRID)
def test_the_fused_kernel_matches_eager(c, e, act, residual, shape, lanes):
    model = _model(ChannelMLP(c, e, act, residual), ChannelMLP(c, 3 * c, nn.ReLU, True, norm=False))
    _two_blocks_fused_match_eager(model, torch.randn(shape), lanes, "pointwise_mlp")


def _two_blocks_fused_match_eager(model, x, lanes, kind):
    """``model``'s modules "1" and "2" forced fused: two blocks of ``kind``, run by their kernel, as eager."""
    target = resolve_target("cpu").with_lanes(lanes)
    fast = convopt.optimize(model, x, target=target, tuning_logs=False, fuse_blocks={"1": True, "2": True},
                            check=False)
    fused = [n for n in fast.graph.nodes if n.op is Op.FUSED_BLOCK]
    assert [n.attrs.kind for n in fused] == [kind] * 2
    assert all(fast.placement()[n.name].endswith(f"(fused_{kind})") for n in fused)
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
def test_an_mlp_adding_its_own_input_matches_eager(lanes):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), ResidualMLP(16, 40), nn.Conv2d(16, 8, 3, padding=1)).eval()
    x = torch.randn(1, 3, 11, 9)
    target = resolve_target("cpu").with_lanes(lanes)
    fast = convopt.optimize(model, x, target=target, tuning_logs=False, fuse_blocks={"1": True}, check=False)
    assert [n.attrs.kind for n in fast.graph.nodes if n.op is Op.FUSED_BLOCK] == ["pointwise_mlp"]
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
def test_blocks_exchange_channel_blocks_with_their_neighbours(lanes):
    """The MLP's input, its skip and its output stored blocked where the convs beside it run blocked."""
    model = _model(ChannelMLP(32, 128), ChannelMLP(32, 96, nn.ReLU)).append(nn.Conv2d(32, 8, 3, padding=1))
    x = torch.randn(1, 3, 12, 12)
    target = resolve_target("cpu").with_lanes(lanes)
    convs = {"0": "im2win", "1.conv_dw": "depthwise", "2.conv_dw": "depthwise", "3": "im2win"}  # run blocked
    fast = convopt.optimize(model, x, target=target, tuning_logs=False, fuse_blocks={"1": True, "2": True},
                            lowering=convs, check=False)
    graph, blocked = fast.graph, f"NCHW{lanes}c"
    fused = [n for n in graph.nodes if n.op is Op.FUSED_BLOCK]
    for n in fused:  # input, skip, output
        stored = [graph.types[i].layout for i in n.inputs if i not in graph.constant_map] + [n.type.layout]
        assert stored == [blocked] * 3
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("layouts", [(True, True, True), (True, False, True), (False, True, False),
                                     (True, True, False)], ids=lambda t: "".join("b" if v else "n" for v in t))
def test_each_tensor_in_either_layout_stores_the_same_values(lanes, layouts):
    """(input, skip, output) blocked or NCHW against numpy, on a map split into bands."""
    in_block, skip_block, out_block = layouts
    block = PointwiseMLP.of(16, 48, 16, 7, 11, activation="relu", batch=2)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((48, 16), (48,), (16, 48), (16,))]
    weights = prepare_weights(block, *arrays, lanes=lanes)
    x, skip = (rng.standard_normal((2, 16, 7, 11)).astype(np.float32) for _ in range(2))
    target = resolve_target("cpu")  # the host runs either width
    func = prim_func(block, lanes, 3, in_block=in_block, out_block=out_block, skip_block=skip_block)
    run = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm)["main"]
    out = tvm.runtime.empty(io_shapes(block, lanes, in_block, out_block)[1], "float32", target.device())
    stored = [to_blocked(a, lanes) if b else a for a, b in ((x, in_block), (skip, skip_block))]
    run(tvm.runtime.tensor(stored[0]), *map(tvm.runtime.tensor, weights), tvm.runtime.tensor(stored[1]), out)
    hidden = np.maximum(np.einsum("nchw,ec->nehw", x, arrays[0]) + arrays[1][:, None, None], 0)
    expected = np.einsum("nehw,oe->nohw", hidden, arrays[2]) + arrays[3][:, None, None] + skip
    got = out.numpy()
    assert relative_error(torch.from_numpy(got), torch.from_numpy(to_blocked(expected, lanes) if out_block
                                                                   else expected)) <= 1e-5


def test_a_band_per_core_left_after_the_batch():
    assert default_bands(PointwiseMLP.of(16, 64, 16, 14, 14), cores=1) == 1
    assert default_bands(PointwiseMLP.of(16, 64, 16, 14, 14), cores=2) == 2
    assert default_bands(PointwiseMLP.of(16, 64, 16, 14, 14, batch=2), cores=2) == 1
    assert default_bands(PointwiseMLP.of(16, 64, 16, 3, 3), cores=8) == 3


def test_a_forced_mlp_compiles_for_cuda_as_the_cuda_fused_kernel():
    """CUDA's fused kernel (schedules/fused_block_cuda.py, tests/schedules/test_fused_block_cuda.py) runs a
    pointwise MLP too, its skip an argument."""
    from convopt.backends.tvm_backend import compile_graph
    from convopt.capture import capture_program
    from convopt.pipeline import build, run_passes
    from tests.conftest import cuda_sources

    model = _model(ChannelMLP(16, 64))
    target = resolve_target({"kind": "cuda", "arch": "sm_80"})
    captured = capture_program(model, (torch.randn(1, 3, 14, 14),), mode="inference").graph
    graph, _ = run_passes(captured, build("inference", target, fuse_blocks={"1": True}))
    assert [n.attrs.kind for n in graph.nodes if n.op is Op.FUSED_BLOCK] == ["pointwise_mlp"]
    executable, kernels, _ = compile_graph(graph, target)
    assert [k["lowering"] for k in kernels.values() if k["lowering"].startswith("fused_")] == ["fused_pointwise_mlp"]
    assert any("fb_expand_act_shared" in s for s in cuda_sources(executable))


CONVNEXT_GRID = [  # (c, e, k, input shape): the block's input comes from a 3x3 conv of 3 channels
    (16, 64, 7, (1, 3, 14, 14)),
    (24, 96, 5, (2, 3, 9, 13)),   # batch 2, odd map, C a multiple of 8 but not of 16
    (12, 40, 3, (1, 3, 7, 6)),    # channels below one vector
    (40, 160, 7, (1, 3, 5, 4)),   # a map smaller than the kernel (every window row partly padding)
]


INCEPTION_GRID = [  # (c, band kernel, input shape): timm's InceptionNeXt blocks (split into an identity part,
    (40, 9, (1, 3, 14, 14)),  # a 3x3, a 1 x band and a band x 1 depthwise conv; BatchNorm; MLP; layer scale)
    (32, 11, (2, 3, 9, 13)),   # batch 2, odd map, InceptionNeXt's usual 11
    (16, 5, (1, 3, 4, 3)),     # a map smaller than the kernel, parts of 2 channels
]


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("c, band, shape", INCEPTION_GRID)
def test_an_inception_next_block_with_its_token_mixer_matches_eager(c, band, shape, lanes):
    from timm.models.inception_next import InceptionDWConv2d, MetaNeXtBlock

    torch.manual_seed(2)

    def block():
        b = MetaNeXtBlock(c, token_mixer=lambda dim, **kw: InceptionDWConv2d(dim, band_kernel_size=band, **kw),
                          ls_init_value=0.5)
        with torch.no_grad():
            b.norm.running_mean.uniform_(-1, 1)
            b.norm.running_var.uniform_(0.5, 2)
        return b

    model = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), block(), block()).eval()
    _two_blocks_fused_match_eager(model, torch.randn(shape), lanes, "convnext_block")
    # the kernel skips the taps no branch has: 3x3, 1 x band and band x 1 kernels, centred
    mixer = model[1].token_mixer
    arrays = [np.zeros((c, 1, band, band), np.float32), np.zeros(c, np.float32), None, None,
              np.zeros((4 * c, c, 1, 1), np.float32), None, np.zeros((c, 4 * c, 1, 1), np.float32), None]
    g = mixer.split_indexes[0]
    arrays[0][g:, 0, band // 2 - 1:band // 2 + 2, band // 2 - 1:band // 2 + 2] = 1  # a 3x3 footprint somewhere
    arrays[0][g:, 0, band // 2, :] = arrays[0][g:, 0, :, band // 2] = 1  # the bands' row and column
    block_spec = PointwiseMLP.of(c, 4 * c, c, 5, 5, mixer_kernel=band, norm=False)
    taps = prepare_weights(block_spec, *arrays, lanes=lanes)[2]
    assert taps.sum() == 9 + 2 * (band - 3) and taps.dtype == np.int32


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("c, e, k, shape", CONVNEXT_GRID)
def test_a_convnext_block_with_its_depthwise_conv_and_norm_matches_eager(c, e, k, shape, lanes):
    from ..passes.test_fuse_blocks import ConvNeXtBlock

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), ConvNeXtBlock(c, e, k), ConvNeXtBlock(c, 2 * c, k)).eval()
    with torch.no_grad():  # a block input far from zero mean: the norm's mean must be subtracted exactly
        model[0].bias.add_(30.0)
    _two_blocks_fused_match_eager(model, torch.randn(shape), lanes, "convnext_block")
