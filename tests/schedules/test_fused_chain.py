"""The fused dense conv chain kernel (conv pairs: ResNet basic blocks, VGG/RepVGG pairs; bottlenecks) against
eager PyTorch by relative error over a grid of shapes: channels that are and aren't multiples of the SIMD
width, strides 1 and 2 on either conv, 3x3 and 5x5, odd maps, batch > 1, with and without the skip (the
block input or a downsampled copy), for 8 and 16 lanes; each of its tensors in either layout against
numpy; the weights' group-major layout; the band rule."""

import numpy as np
import pytest
import torch
import tvm
import torch.nn.functional as F
from torch import nn

import convopt
from convopt.ir import Op
from convopt.ir.layout import to_blocked
from convopt.numerics import relative_error
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.fused_chain import (ConvChain, default_bands, io_shapes, kernel_arguments, prepare_weights,
                                           prim_func, random_arrays)
from convopt.target import resolve_target

from ..passes.test_fuse_blocks import BasicBlock, Bottleneck
from .test_fused_block import _randomize


def _optimized(model, x, lanes, names):
    target = resolve_target("cpu").with_lanes(lanes)
    return convopt.optimize(model, x, target=target, tuning_logs=False, fuse_blocks=dict.fromkeys(names, True),
                            check=False)


GRID = [  # blocks after a 3x3 stem conv (3 -> c channels), input shape
    ([BasicBlock(16, 16), BasicBlock(16, 24, stride=2)], (1, 3, 15, 13)),   # odd map, downsample, 24 channels
    ([BasicBlock(8, 8, k=5), BasicBlock(8, 12, stride=2, skip=False)], (2, 3, 11, 9)),  # 5x5, batch 2, no skip
    ([Bottleneck(32, 8, 32), Bottleneck(32, 16, 48, stride=2)], (1, 3, 14, 10)),
    ([Bottleneck(16, 12, 40, stride=2)], (2, 3, 9, 17)),
]


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("blocks, shape", GRID, ids=["basic", "basic-k5", "bottleneck", "bottleneck-s2"])
def test_the_fused_kernel_matches_eager(blocks, shape, lanes):
    c = blocks[0].conv1.in_channels
    model = _randomize(nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), *blocks))
    x = torch.randn(shape)
    fast = _optimized(model, x, lanes, [str(i + 2) for i in range(len(blocks))])
    fused = [n for n in fast.graph.nodes if n.op is Op.FUSED_BLOCK]
    kind = "bottleneck" if isinstance(blocks[0], Bottleneck) else "conv_pair"
    assert [n.attrs.kind for n in fused] == [kind] * len(blocks)
    assert all(fast.placement()[n.name].endswith(f"(fused_{kind})") for n in fused)
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
def test_a_vgg_chain_fuses_in_pairs_and_matches_eager(lanes):
    layers = []
    for c, o, s in ((3, 16, 2), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 48, 1)):
        layers += [nn.Conv2d(c, o, 3, s, 1), nn.ReLU()]
    model = nn.Sequential(*layers).eval()
    x = torch.randn(1, 3, 33, 29)
    fast = _optimized(model, x, lanes, ["0", "4"])
    assert [n.attrs.kind for n in fast.graph.nodes if n.op is Op.FUSED_BLOCK] == ["conv_pair"] * 2
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4


def _reference(chain, arrays, x, skip):
    y = torch.from_numpy(x)
    for i, spec in enumerate(chain.convs):
        w, b = (torch.from_numpy(a) for a in arrays[2 * i: 2 * i + 2])
        y = F.conv2d(y, w, b, spec.stride, spec.padding)
        y = torch.relu(y) if i < len(chain.convs) - 1 else y
    return torch.relu(y + torch.from_numpy(skip) if chain.residual else y).numpy()


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("layouts", [(True, True, True), (True, False, True), (False, True, False),
                                     (False, False, False)], ids=lambda t: "".join("b" if v else "n" for v in t))
@pytest.mark.parametrize("chain", [
    ConvChain.of(16, 24, 32, 9, 11, stride=2, residual=True, batch=2),
    ConvChain.of(32, 16, 48, 12, 7, bottleneck=True, residual=True, batch=2),
    ConvChain((), (ConvSpec(2, 16, 10, 9, 24, (3, 3), (1, 1), (1, 1)),  # the stride on the second conv, 5x5
                   ConvSpec(2, 24, 10, 9, 32, (5, 5), (2, 2), (2, 2))), ("relu",), True, "relu"),
], ids=["pair", "bottleneck", "pair-strided-5x5"])
def test_each_tensor_in_either_layout_stores_the_same_values(chain, lanes, layouts):
    """(input, skip, output) blocked or NCHW against PyTorch's convs, batch 2, the map split into 3 bands."""
    in_block, skip_block, out_block = layouts
    rng = np.random.default_rng(0)
    arrays = random_arrays(chain, rng)
    x = rng.standard_normal(io_shapes(chain, lanes)[0]).astype(np.float32)
    skip = rng.standard_normal(io_shapes(chain, lanes)[1]).astype(np.float32)
    target = resolve_target("cpu")  # the host runs either width
    func = prim_func(chain, lanes, 3, in_block=in_block, out_block=out_block, skip_block=skip_block)
    run = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm)["main"]
    out = tvm.runtime.empty(io_shapes(chain, lanes, in_block, out_block)[1], "float32", target.device())
    stored = [to_blocked(a, lanes) if b else a for a, b in ((x, in_block), (skip, skip_block))]
    run(tvm.runtime.tensor(stored[0]), *map(tvm.runtime.tensor, kernel_arguments(chain, arrays, lanes)),
        tvm.runtime.tensor(stored[1]), out)
    expected = _reference(chain, arrays, x, skip)
    got = out.numpy()
    assert relative_error(torch.from_numpy(got), torch.from_numpy(to_blocked(expected, lanes) if out_block
                                                                   else expected)) <= 1e-5


def test_weights_are_stored_in_contiguous_output_channel_groups():
    chain = ConvChain.of(8, 48, 40, 6, 6, bottleneck=True)  # 48 = 3 vectors of 16: one vector a group
    w = [np.arange(np.prod(shape), dtype=np.float32).reshape(shape) for shape in ((48, 8, 1, 1), (48, 48, 3, 3),
                                                                                  (40, 48, 1, 1))]
    wa, ba, wb, bb, wp, bp = prepare_weights(chain, w[0], None, w[1], None, w[2], None, lanes=16)
    assert wa.shape == (3, 1, 1, 8, 16) and wb.shape == (3, 3, 3, 48, 16) and wp.shape == (3, 1, 1, 48, 16)
    assert wb[1, 2, 0, 5, 3] == w[1][16 + 3, 5, 2, 0]  # group 1, tap (2, 0), input 5, output 16 + 3
    assert wp[2, 0, 0, 47, 7] == w[2][32 + 7, 47, 0, 0] and wp[2, 0, 0, 47, 8] == 0  # 40 outputs padded to 48
    assert bb.shape == (48,) and not bb.any()
    pair = prepare_weights(ConvChain.of(8, 64, 64, 6, 6), np.zeros((64, 8, 3, 3)), None, np.zeros((64, 64, 3, 3)),
                           None, lanes=16)
    assert pair[0].shape == (2, 3, 3, 8, 32)  # 4 vectors: two a group


def test_a_band_per_core_left_after_the_batch():
    assert default_bands(ConvChain.of(16, 16, 16, 14, 14), cores=1) == 1
    assert default_bands(ConvChain.of(16, 16, 16, 14, 14), cores=2) == 2
    assert default_bands(ConvChain.of(16, 16, 16, 14, 14, batch=2), cores=2) == 1
    assert default_bands(ConvChain.of(16, 16, 16, 6, 6, stride=2), cores=8) == 3


def test_on_cuda_a_forced_pair_and_bottleneck_run_the_cuda_kernel():
    """CUDA has a fused kernel for conv pairs and bottlenecks (schedules/fused_block_cuda.py): forced there,
    both are fused and compile as that kernel (tests/schedules/test_fused_block_cuda.py tests it)."""
    from convopt.backends.tvm_backend import compile_graph
    from convopt.capture import capture_program
    from convopt.pipeline import build, run_passes

    model = _randomize(nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), BasicBlock(32, 32),
                                           Bottleneck(32, 8, 32)))
    captured = capture_program(model, (torch.randn(1, 3, 14, 14),), mode="inference").graph
    cuda = resolve_target({"kind": "cuda", "arch": "sm_80"})
    graph, _ = run_passes(captured, build("inference", cuda, fuse_blocks={"2": True, "3": True}))
    assert [n.attrs.kind for n in graph.nodes if n.op is Op.FUSED_BLOCK] == ["conv_pair", "bottleneck"]
    _, kernels, _ = compile_graph(graph, cuda)
    assert sorted(k["lowering"] for k in kernels.values() if k["lowering"].startswith("fused_")) == [
        "fused_bottleneck", "fused_conv_pair"]
