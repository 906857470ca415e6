"""The fused inverted residual kernel against eager PyTorch (relative error) over a grid of block shapes:
channels that are and aren't multiples of the SIMD width, expansion ratios, kernels 3/5/7, strides 1/2,
odd maps, batch > 1, the activations it supports, for 8 and 16 lanes; and its design space's default."""

import pytest
import torch
from torch import nn

import convopt
from convopt.ir import Op
from convopt.numerics import relative_error
from convopt.schedules.fused_block import InvertedResidual as Block
from convopt.schedules.fused_block import default_bands, default_groups
from convopt.schedules.fused_space import channel_vectors, column_tile
from convopt.target import resolve_target

from ..passes.test_fuse_blocks import InvertedResidual


def _randomize(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


GRID = [  # (c, e, o, k, stride, act, input shape)
    (16, 64, 16, 3, 1, nn.ReLU6, (1, 16, 14, 14)),
    (24, 144, 24, 3, 1, nn.ReLU6, (1, 24, 17, 13)),       # odd map, E a multiple of 16, C and O not
    (12, 20, 10, 5, 2, nn.SiLU, (2, 12, 15, 15)),         # batch 2, stride 2, E and O below one vector
    (8, 48, 8, 7, 1, nn.Hardswish, (1, 8, 9, 11)),
    (32, 96, 40, 3, 2, nn.ReLU, (1, 32, 28, 28)),
    (40, 240, 40, 5, 1, nn.SiLU, (1, 40, 7, 7)),
    (48, 48, 48, 3, 1, nn.ReLU, (1, 48, 13, 11)),         # 3 vectors of 16 in every stage: tiles of three
]


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("c, e, o, k, stride, act, shape", GRID)
def test_the_fused_kernel_matches_eager(c, e, o, k, stride, act, shape, lanes):
    model = _randomize(InvertedResidual(c, e, o, k, stride, act))
    x = torch.randn(shape)
    target = resolve_target("cpu").with_lanes(lanes)
    fast = convopt.optimize(model, x, target=target, tuning_logs=False, fuse_blocks={"conv_pw": True}, check=False)
    assert [n.op for n in fast.graph.nodes] == [Op.FUSED_BLOCK]
    assert list(fast.placement().values()) == [f"kernel convopt_fused_{fast.graph.nodes[0].name} "
                                                "(fused_inverted_residual)"]
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4


SAME_GRID = [  # TF "SAME" padding (a pad op before an unpadded depthwise conv): (c, e, o, k, stride, shape)
    (16, 64, 24, 3, 2, (1, 16, 14, 14)),    # (0, 0, 1, 1): asymmetric
    (24, 96, 24, 5, 2, (2, 24, 16, 16)),    # (1, 1, 2, 2), batch 2
    (16, 48, 16, 5, 2, (1, 16, 15, 15)),    # odd map: (2, 2, 2, 2)
    (12, 40, 12, 3, 1, (1, 12, 9, 10)),     # stride 1: (1, 1, 1, 1), residual
]


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("c, o, act", [(48, 48, nn.ReLU), (16, 24, nn.SiLU), (12, 20, nn.ReLU6)])
def test_a_block_with_the_activation_after_it_matches_eager(c, o, act, lanes):
    """MobileOne-style: every conv ends in an activation, the last one after the add (a residual where c == o;
    20 channels: the blocked output's pad lanes must stay 0 through it)."""
    model = _randomize(nn.Sequential(InvertedResidual(c, 2 * c, o, 3, 1, act), act()))
    x = torch.randn(1, c, 11, 9)
    target = resolve_target("cpu").with_lanes(lanes)
    fast = convopt.optimize(model, x, target=target, tuning_logs=False, fuse_blocks={"0": True}, check=False)
    assert [n.op for n in fast.graph.nodes] == [Op.FUSED_BLOCK]
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("c, e, o, k, stride, shape", SAME_GRID)
def test_tf_same_padding_is_fused_and_matches_eager(c, e, o, k, stride, shape, lanes):
    model = _randomize(InvertedResidual(c, e, o, k, stride, nn.SiLU, same=True))
    x = torch.randn(shape)
    target = resolve_target("cpu").with_lanes(lanes)
    fast = convopt.optimize(model, x, target=target, tuning_logs=False, fuse_blocks={"conv_pw": True}, check=False)
    assert [n.op for n in fast.graph.nodes] == [Op.FUSED_BLOCK]
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("e, stride, size", [(72, 2, 19), (64, 1, 7)], ids=["bands", "groups"])
def test_the_part_before_a_squeeze_excite_matches_eager(lanes, e, stride, size):
    # a 7x7 map on two or more cores: the cores split the channels (default_groups), not the rows
    model = _randomize(InvertedResidual(24, e, 24, 5, stride, nn.SiLU, se=True))
    x = torch.randn(1, 24, size, size)
    target = resolve_target("cpu").with_lanes(lanes)
    fast = convopt.optimize(model, x, target=target, tuning_logs=False, fuse_blocks={"conv_pw": True}, check=False)
    fused = [n for n in fast.graph.nodes if n.op is Op.FUSED_BLOCK]
    assert [n.attrs.kind for n in fused] == ["expand_depthwise", "squeeze_excite"]
    assert fast.placement()[fused[0].name].endswith("(fused_expand_depthwise)")
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4


def test_without_a_fused_prediction_nothing_is_fused_and_false_turns_it_off():
    model = _randomize(InvertedResidual())
    x = torch.randn(1, 16, 14, 14)
    off = convopt.optimize(model, x, tuning_logs=False, fuse_blocks=False)
    assert all(n.op is not Op.FUSED_BLOCK for n in off.graph.nodes)
    skipped = convopt.optimize(model, x, tuning_logs=False, skip_passes=["fuse_blocks"], check=False)
    assert all(n.op is not Op.FUSED_BLOCK for n in skipped.graph.nodes)


def test_a_band_per_core_left_after_the_batch_and_tiles_that_fit_the_registers():
    assert default_bands(Block.of(16, 64, 16, 14, 14, 3), cores=1) == 1  # one band: no row computed twice
    assert default_bands(Block.of(16, 64, 16, 14, 14, 3), cores=2) == 2
    assert default_bands(Block.of(16, 64, 16, 14, 14, 3, batch=2), cores=2) == 1  # an image per core
    assert default_bands(Block.of(16, 64, 16, 3, 3, 3), cores=8) == 3  # at most a band per output row
    assert column_tile(56, 16) == 8 and column_tile(14, 16) == 7 and column_tile(13, 16) == 8  # ragged tail
    assert column_tile(56, 16, 2) == 8  # 16 accumulators of AVX-512's 32 registers
    assert column_tile(56, 8, 2) == 4 and column_tile(30, 8) == 6  # AVX2: 8 accumulators of its 16
    assert channel_vectors(6) == 2 and channel_vectors(3) == 1
    # three where the vectors group in threes and AVX-512's 16 accumulators hold 3 x 4 columns of them; on
    # AVX2 (8 accumulators) one vector of 8 columns; never where the space's point asks for one
    assert channel_vectors(3, lanes=16) == 3 and channel_vectors(9, lanes=16) == 3 and column_tile(56, 16, 3) == 4
    assert channel_vectors(6, lanes=16) == 2 and channel_vectors(5, lanes=16) == 1
    assert channel_vectors(3, lanes=8) == 1 and channel_vectors(3, most=1, lanes=16) == 1


def test_without_a_projection_the_cores_split_the_channels_where_bands_would_recompute_more():
    late = Block.of(192, 1152, None, 7, 7, 5)  # efficientnet_b0's: two bands compute 11 expand rows for 7
    assert default_groups(late, cores=2, lanes=16) == 2 and default_bands(late, cores=2, lanes=16) == 1
    assert default_groups(late, cores=1, lanes=16) == 1  # one core: nothing to split
    assert default_groups(Block.of(192, 1152, 192, 7, 7, 5), cores=2) == 1  # the projection needs every channel
    assert default_groups(Block.of(192, 1152, None, 7, 7, 5, batch=2), cores=2) == 1  # an image per core
    # 96 channels in 3 tiles of 2 vectors: a 2 : 1 split loses to two bands of 56 rows (1 row twice)
    early = Block.of(16, 96, None, 112, 112, 3, 2)
    assert default_groups(early, cores=2, lanes=16) == 1 and default_bands(early, cores=2, lanes=16) == 2
    # at 14 px (5x5): 3 tiles split 2 : 1 (1.33x the even share) lose to bands of 9 + 9 rows for 14 (1.29x),
    # 21 tiles split 11 : 10 (1.05x) win
    assert default_groups(Block.of(16, 96, None, 14, 14, 5), cores=2, lanes=16) == 1
    assert default_groups(Block.of(112, 672, None, 14, 14, 5), cores=2, lanes=16) == 2


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("blocked", [False, True], ids=["nchw", "blocked"])
@pytest.mark.parametrize("e", [64, 80, 60], ids=["even", "uneven", "padded"])  # 80: 5 tiles of one vector at 16
def test_channel_groups_store_what_bands_store(lanes, blocked, e):
    import numpy as np
    import tvm

    from convopt.ir.layout import to_blocked
    from convopt.schedules.fused_block import io_shapes, prepare_weights, prim_func

    c, k = 16, 5
    block = Block.of(c, e, None, 9, 9, k)
    rng = np.random.default_rng(0)
    weights = prepare_weights(block, *(rng.standard_normal(s).astype(np.float32)
                                       for s in ((e, c), (e,), (e, k, k), (e,))), lanes=lanes)
    x = rng.standard_normal((1, c, 9, 9)).astype(np.float32)
    target = resolve_target("cpu")  # the host runs either width
    outputs = []
    for bands, groups in ((2, 1), (1, 2), (2, 2)):
        func = prim_func(block, lanes, bands, in_block=blocked, out_block=blocked, groups=groups)
        run = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm)["main"]
        out = tvm.runtime.empty(io_shapes(block, lanes, blocked, blocked)[1], "float32", target.device())
        run(tvm.runtime.tensor(to_blocked(x, lanes) if blocked else x), *map(tvm.runtime.tensor, weights), out)
        outputs.append(out.numpy())
    assert all(np.array_equal(outputs[0], other) for other in outputs[1:])  # the same sums in the same order
    with pytest.raises(ValueError, match="channel groups need no projection"):
        prim_func(Block.of(c, e, c, 9, 9, k), lanes, 1, groups=2)


def test_the_kernel_is_a_tuning_task_over_its_generator():
    """Written out, not scheduled: its space is its generator's parameters (fused_space.py), enumerated."""
    from convopt.tuning.tasks import extract_tasks

    model = _randomize(nn.Sequential(InvertedResidual(), nn.Conv2d(16, 16, 3, padding=1)))
    x = torch.randn(1, 16, 14, 14)
    fast = convopt.optimize(model, x, tuning_logs=False, fuse_blocks={"0": True}, check=False)
    assert any(n.op is Op.FUSED_BLOCK for n in fast.graph.nodes)
    tasks = extract_tasks(fast.graph, resolve_target("cpu"))
    assert [t.kind for t in tasks] == ["fused_inverted_residual", fast.graph.nodes[-1].attrs.lowering]
    assert tasks[0].generator is not None and not tasks[0].searched and tasks[0].size() > 1


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
def test_blocks_in_a_model_compile_fused_between_other_ops(lanes):
    """Blocks whose input is another op's value (not the graph input), beside unfused convs, exchanging
    channel-blocked tensors with their neighbours (block_layout) and with each other."""
    model = _randomize(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), InvertedResidual(),
                                     InvertedResidual(16, 96, 32, 5, 2), nn.Conv2d(32, 32, 3, padding=1)))
    x = torch.randn(1, 3, 20, 20)
    target = resolve_target("cpu").with_lanes(lanes)
    fast = convopt.optimize(model, x, target=target, tuning_logs=False, fuse_blocks={"2": True, "3": True},
                            lowering={"0": "im2win", "4": "im2win"}, check=False)  # convs that run blocked
    # (left to the cost model, the first conv's lowering flips with the machine's measured peak)
    graph = fast.graph
    fused = [n for n in graph.nodes if n.op is Op.FUSED_BLOCK]
    assert [n.attrs.kind for n in fused] == ["inverted_residual"] * 2
    blocked = f"NCHW{lanes}c"
    assert [(graph.types[n.inputs[0]].layout, n.type.layout) for n in fused] == [(blocked, blocked)] * 2
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
def test_blocks_exchange_padded_channel_blocks(lanes):
    """Channels that fill 2.5 blocks (20 or 40) between fused blocks and convs: stored in padded blocks
    (passes/block_layout.py), the residual block's input padded alike; the part before a squeeze-excite too."""
    c = 2 * lanes + lanes // 2
    model = _randomize(nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), InvertedResidual(c, 4 * c, c),
                                     InvertedResidual(c, 3 * c, c, se=True), nn.Conv2d(c, 32, 3, padding=1)))
    x = torch.randn(2, 3, 13, 15)
    target = resolve_target("cpu").with_lanes(lanes)
    fast = convopt.optimize(model, x, target=target, tuning_logs=False, fuse_blocks={"2": True, "3": True},
                            lowering={"0": "im2win", "3.conv_pwl": "direct", "4": "im2win"})  # check=True: 1e-4
    graph = fast.graph
    fused = [n for n in graph.nodes if n.op is Op.FUSED_BLOCK]
    assert [n.attrs.kind for n in fused] == ["inverted_residual", "expand_depthwise", "squeeze_excite"]
    blocked = f"NCHW{lanes}c"  # (batch 2: the squeeze-excite scales the map, padded blocks in and out)
    assert [(graph.types[n.inputs[0]].layout, n.type.layout) for n in fused] == [(blocked, blocked)] * 3
    assert all(graph.types[n.inputs[0]].shape[1] % lanes for n in fused)
    x2 = torch.randn_like(x)
    with torch.no_grad():
        assert relative_error(fast(x2), model(x2)) <= 1e-5


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("project", [True, False], ids=["block", "partial"])
@pytest.mark.parametrize("k, stride, batch", [(3, 1, 1), (5, 2, 2)])
@pytest.mark.parametrize("c, e", [(16, 48), (20, 44)], ids=["whole", "padded"])  # 20 and 44: padded blocks
def test_blocked_input_and_output_store_the_same_values(lanes, project, k, stride, batch, c, e):
    """The kernel with its input (and residual) and its output in channel blocks against the NCHW kernel; in
    padded blocks (ir/layout.py) the pad lanes it stores are zeros, as ``to_blocked`` pads."""
    import numpy as np
    import tvm

    from convopt.ir.layout import to_blocked
    from convopt.schedules.fused_block import io_shapes, prepare_weights, prim_func

    block = Block.of(c, e, c if project else None, 11, 11, k, stride, batch=batch)
    rng = np.random.default_rng(0)
    shapes = ((e, c), (e,), (e, k, k), (e,)) + (((c, e), (c,)) if project else ())
    weights = prepare_weights(block, *(rng.standard_normal(s).astype(np.float32) for s in shapes), lanes=lanes)
    x = rng.standard_normal((batch, c, 11, 11)).astype(np.float32)
    target = resolve_target("cpu")  # the host runs either width
    outputs = {}
    for blocked in (False, True):
        func = prim_func(block, lanes, 2, in_block=blocked, out_block=blocked)
        run = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm)["main"]
        out = tvm.runtime.empty(io_shapes(block, lanes, blocked, blocked)[1], "float32", target.device())
        run(tvm.runtime.tensor(to_blocked(x, lanes) if blocked else x), *map(tvm.runtime.tensor, weights), out)
        outputs[blocked] = out.numpy()
    assert np.array_equal(to_blocked(outputs[False], lanes), outputs[True])


def test_a_graph_fused_for_the_cpu_compiles_for_cuda_with_the_cuda_kernel():
    """A fused block node (here fused for the CPU, whose blocks then read NCHW) is compiled for CUDA by the
    CUDA fused kernel (schedules/fused_block_cuda.py; tests/schedules/test_fused_block_cuda.py)."""
    from convopt.backends.tvm_backend import compile_graph
    from tests.conftest import cuda_sources

    model = _randomize(InvertedResidual())
    graph = convopt.optimize(model, torch.randn(1, 16, 14, 14), tuning_logs=False, fuse_blocks={"conv_pw": True},
                             check=False).graph
    assert any(n.op is Op.FUSED_BLOCK for n in graph.nodes)
    executable, kernels, _ = compile_graph(graph, resolve_target({"kind": "cuda", "arch": "sm_80"}))
    assert [k["lowering"] for k in kernels.values() if k["lowering"].startswith("fused")] == ["fused_inverted_residual"]
    assert any("__global__" in s and "fb_expand_act_shared" in s for s in cuda_sources(executable))


def test_built_alone_cold_cycles_through_copies_of_its_activations(monkeypatch):
    """calibrate times each fused kernel on activations not in L2, as a conv's (cost/calibrate.py)."""
    import convopt.schedules.fused_block as fb
    from convopt.schedules.fused_block import InvertedResidual, build
    from convopt.target import resolve_target

    calls = []
    real = fb.cold_copies
    monkeypatch.setattr(fb, "cold_copies", lambda footprint, target: calls.append(real(footprint, target)) or calls[-1])
    host = resolve_target("cpu").with_lanes(8)
    run = build(InvertedResidual.of(8, 16, 8, 6, 6, 3, 1), host, cold=True)
    for _ in range(3):
        run()
    assert calls and calls[0] > 1  # a tiny block: many copies
    build(InvertedResidual.of(8, 16, 8, 6, 6, 3, 1), host)  # hot: no copies asked for
    assert len(calls) == 1
