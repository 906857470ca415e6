"""Numerical tests of convopt.schedules.direct_conv2d against torch.nn.functional.conv2d."""

import re

import numpy as np
import pytest
import torch
import tvm
from tvm import relax, te

from convopt.schedules.direct_conv2d import (
    direct_conv2d_compute,
    find_direct_conv2d_funcs,
    pack_weight,
    schedule_direct_conv2d,
)
from convopt.schedules import tiling
from convopt.schedules.prefetch import PREFETCH_NEXT_CHUNK
from convopt.schedules.tiling import channel_block

from convopt.schedules.conv_spec import ConvSpec

from .conv_cases import HOST, LANES, OTHER_ISAS, error_against_torch, host


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _torch_ref(x, w, b, r, stride, padding, dilation, groups, act):
    if isinstance(padding, tuple) and len(padding) == 4:
        t, l, bo, ri = padding
        x = torch.nn.functional.pad(x, (l, ri, t, bo))
        padding = 0
    y = torch.nn.functional.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    if r is not None:
        y = y + r
    if act == "relu":
        y = torch.relu(y)
    elif act == "relu6":
        y = torch.clamp(y, 0.0, 6.0)
    return y


def _run_case(N, C, H, W, O, k, s, p, d, g, bias, res, act, sched_kw=None, oc_block=None, lanes=8,
              column_phases=False):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((O, C // g, k, k), dtype=np.float32)
    b = rng.standard_normal((O,), dtype=np.float32) if bias else None
    ref0 = _torch_ref(torch.from_numpy(x), torch.from_numpy(w), None, None, s, p, d, g, "none")
    OH, OW = ref0.shape[2:]
    r = rng.standard_normal((N, O, OH, OW), dtype=np.float32) * 3 if res else None
    ref = _torch_ref(
        torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
        None if r is None else torch.from_numpy(r), s, p, d, g, act,
    ).numpy()

    ob = oc_block or channel_block(O // g, lanes)
    pw = pack_weight(w, g, ob)
    X = te.placeholder(x.shape, name="x")
    Wp = te.placeholder(pw.shape, name="w")
    B = te.placeholder((O,), name="b") if bias else None
    R = te.placeholder(r.shape, name="r") if res else None
    out = direct_conv2d_compute(
        X, Wp, B, out_channels=O, kernel=(k, k), stride=(s, s), padding=p,
        dilation=(d, d), groups=g, oc_block=ob, activation=act, residual=R, column_phases=column_phases,
    )
    assert tuple(int(v) for v in out.shape) == ref.shape
    args = [X, Wp] + ([B] if bias else []) + ([R] if res else []) + [out]
    func = te.create_prim_func(args).with_attr("global_symbol", "conv")
    sch = tvm.s_tir.Schedule(tvm.IRModule({"conv": func}))
    schedule_direct_conv2d(sch, "conv", host(lanes), **(sched_kw or {}))
    ex = tvm.compile(sch.mod, target=HOST.tvm)
    dev = tvm.cpu()
    targs = [tvm.runtime.tensor(x, dev), tvm.runtime.tensor(pw, dev)]
    if bias:
        targs.append(tvm.runtime.tensor(b, dev))
    if res:
        targs.append(tvm.runtime.tensor(r, dev))
    y = tvm.runtime.tensor(np.zeros(ref.shape, np.float32), dev)
    ex["conv"](*targs, y)
    err = _rel(y.numpy(), ref)
    assert err <= 1e-4, err


# N, C, H, W, O, k, stride, padding, dilation, groups, bias, residual, activation
CASES = [
    pytest.param(1, 24, 13, 17, 40, 3, 1, 1, 1, 1, True, False, "relu", id="3x3-s1-c24-o40"),
    pytest.param(2, 3, 20, 15, 40, 7, 2, 3, 1, 1, True, False, "none", id="7x7-s2-c3-batch2"),
    pytest.param(1, 24, 12, 10, 40, 1, 1, 0, 1, 1, False, True, "relu6", id="1x1-residual-relu6"),
    pytest.param(1, 40, 14, 13, 24, 1, 2, 0, 1, 1, True, False, "relu", id="1x1-s2"),
    pytest.param(1, 64, 5, 4, 96, 1, 1, 0, 1, 1, True, True, "relu", id="1x1-weights-larger-than-input"),
    pytest.param(2, 16, 11, 9, 20, 3, 2, 1, 1, 1, True, True, "relu", id="3x3-s2-o20-residual-batch2"),
    pytest.param(1, 24, 14, 16, 40, 3, 1, 2, 2, 1, True, False, "relu", id="3x3-dilation2"),
    pytest.param(1, 8, 9, 12, 16, 5, 1, (1, 2, 3, 0), 1, 1, True, False, "none", id="5x5-asym-pad"),
    pytest.param(1, 24, 10, 12, 40, 3, 1, 1, 1, 2, True, True, "relu6", id="groups2-ocpg20"),
    pytest.param(2, 8, 10, 10, 6, 3, 1, 1, 1, 2, True, False, "relu", id="groups2-ocpg3"),
    pytest.param(1, 32, 8, 8, 64, 3, 1, 1, 1, 4, False, False, "none", id="groups4-ocpg16"),
    # ResNeXt-like groups of 4 (AVX-512: vectorized over columns, a divisor of the row; AVX2: over channels)
    pytest.param(1, 32, 28, 28, 32, 3, 1, 1, 1, 8, True, True, "relu", id="groups8-ocpg4-w28"),
    pytest.param(2, 24, 13, 13, 24, 3, 1, 1, 1, 8, True, False, "relu", id="groups8-ocpg3-w13-batch2"),
    pytest.param(1, 16, 19, 37, 16, 3, 1, 1, 1, 8, False, False, "none", id="groups8-ocpg2-w37"),
    pytest.param(1, 24, 15, 15, 24, 3, 1, 1, 1, 24, True, False, "relu6", id="depthwise-3x3"),
    pytest.param(2, 16, 14, 11, 16, 3, 2, 1, 1, 16, False, True, "none", id="depthwise-s2-residual"),
    pytest.param(1, 12, 17, 19, 12, 5, 1, 4, 2, 12, True, False, "relu", id="depthwise-5x5-dilation2"),
    pytest.param(1, 8, 9, 9, 16, 3, 1, 1, 1, 8, True, False, "none", id="depthwise-multiplier2"),
]


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("N,C,H,W,O,k,s,p,d,g,bias,res,act", CASES)
def test_matches_torch(N, C, H, W, O, k, s, p, d, g, bias, res, act, lanes):
    _run_case(N, C, H, W, O, k, s, p, d, g, bias, res, act, lanes=lanes)


@pytest.mark.parametrize(
    "sched_kw",
    [dict(ow_tile=6, oc_tile=1), dict(ow_tile=5, oc_tile=2), dict(ow_tile=13, oc_tile=1)],
    ids=["ow6", "ow5-oc2", "ow13"],
)
def test_non_divisible_tiles(sched_kw):
    # OW = 13: every tile above leaves a guarded tail
    _run_case(1, 16, 13, 13, 24, 3, 1, 1, 1, 1, True, True, "relu", sched_kw=sched_kw)


@pytest.mark.parametrize("lanes", LANES)
def test_wide_oc_block(lanes):
    # an oc_block wider than one vector also works
    _run_case(1, 16, 10, 10, 40, 3, 1, 1, 1, 1, True, False, "relu", oc_block=2 * lanes, lanes=lanes)


def test_choose_and_pack():
    assert channel_block(64, 16) == 16
    assert channel_block(40, 8) == 8
    assert channel_block(1, 16) == 1
    assert channel_block(3, 8) == 3
    w = np.arange(2 * 5 * 3 * 1 * 1, dtype=np.float32).reshape(10, 3, 1, 1)  # groups=2, ocpg=5
    pw = pack_weight(w, 2, 4)
    assert pw.shape == (4, 3, 1, 1, 4)
    # group 1, block 1 holds channel 9 in lane 0, zeros in lanes 1..3
    np.testing.assert_array_equal(pw[3, :, 0, 0, 0], w[9, :, 0, 0])
    assert not pw[3, :, :, :, 1:].any()
    np.testing.assert_array_equal(pw[2, :, 0, 0, :], w[5:9, :, 0, 0].T)


def test_relax_emit_te():
    """The documented path: BlockBuilder.emit_te, then schedule the PrimFuncs by name."""
    N, C, H, W, O = 1, 16, 12, 12, 24
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w1 = rng.standard_normal((O, C, 3, 3), dtype=np.float32)
    w2 = rng.standard_normal((O, O, 1, 1), dtype=np.float32)
    b = rng.standard_normal((O,), dtype=np.float32)
    ob = channel_block(O, HOST.lanes)
    pw1, pw2 = pack_weight(w1, 1, ob), pack_weight(w2, 1, ob)

    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((N, C, H, W), "float32"))
    w1v = relax.Var("w1", relax.TensorType(pw1.shape, "float32"))
    w2v = relax.Var("w2", relax.TensorType(pw2.shape, "float32"))
    bv = relax.Var("b", relax.TensorType((O,), "float32"))
    with bb.function("main", [xv, w1v, w2v, bv]):
        with bb.dataflow():
            y = bb.emit_te(
                direct_conv2d_compute, xv, w1v, bv,
                out_channels=O, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                dilation=(1, 1), groups=1, oc_block=ob, activation="relu", residual=None,
                primfunc_name_hint="conv_a",
            )
            z = bb.emit_te(
                direct_conv2d_compute, y, w2v, None,
                out_channels=O, kernel=(1, 1), stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), groups=1, oc_block=ob, activation="relu6", residual=y,
                primfunc_name_hint="conv_b",
            )
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    mod = bb.get()
    names = find_direct_conv2d_funcs(mod)
    assert sorted(names) == ["conv_a", "conv_b"]
    sch = tvm.s_tir.Schedule(mod)
    for name in names:
        schedule_direct_conv2d(sch, name, HOST)
    ex = tvm.compile(sch.mod, target=HOST.tvm)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    res = vm["main"](
        tvm.runtime.tensor(x), tvm.runtime.tensor(pw1), tvm.runtime.tensor(pw2), tvm.runtime.tensor(b)
    )
    res = res.numpy() if hasattr(res, "numpy") else res[0].numpy()
    y_ref = torch.relu(
        torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w1), torch.from_numpy(b), padding=1)
    )
    ref = torch.clamp(torch.nn.functional.conv2d(y_ref, torch.from_numpy(w2)) + y_ref, 0, 6).numpy()
    assert _rel(res, ref) <= 1e-4


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("N,C,H,W,O,k,s,p,d,g", [
    (1, 24, 15, 17, 24, 3, 2, 1, 1, 24),   # depthwise stride 2, odd width
    (2, 8, 12, 20, 8, 5, 2, 2, 2, 8),      # dilated: column taps cross phases
    (1, 6, 9, 13, 6, 3, 3, 0, 1, 6),       # stride 3, no padding
    (1, 32, 17, 29, 32, 3, 2, 1, 1, 16),   # groups of 2 channels: the accumulators columns innermost
])
def test_column_phases(N, C, H, W, O, k, s, p, d, g, lanes):
    """A strided conv vectorized over columns reads its input split into column phases: same result."""
    _run_case(N, C, H, W, O, k, s, p, d, g, True, True, "relu", lanes=lanes, column_phases=True)


@pytest.mark.parametrize("lanes", LANES)
def test_column_vectorized_groups_keep_their_columns_contiguous(lanes):
    """Vectorized over output columns with several channels per group, the accumulators store the columns
    innermost (a [.., channel, column] tile): in the compute's [.., column, channel] order every vector was a
    strided gather and scatter (10-20x slower on ResNeXt's 4-channel groups). The tile divides the row."""
    from convopt.schedules.kernel import scheduled_module
    from convopt.schedules.conv_spec import ConvSpec
    from convopt.schedules.tiling import group_row_tile

    spec = ConvSpec(1, 64, 28, 28, 64, (3, 3), (1, 1), (1, 1), (1, 1), 32)  # 2 channels per group
    mod, _ = scheduled_module("direct", spec, np.ones((64, 2, 3, 3), np.float32), host(lanes))
    acc = next(b for b in mod["main"].body.block.alloc_buffers if b.name == "dconv_acc")
    assert [int(v) for v in acc.shape] == [1, 32, 28, 2, 28]  # (n, group blocks, rows, channels, columns)
    assert f"T.vectorized({group_row_tile(28, lanes)})" in mod.script()
    assert group_row_tile(28, lanes) == {16: 14, 8: 7}[lanes]
    dense = ConvSpec(1, 16, 28, 28, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1)  # one channel block: as before
    mod, _ = scheduled_module("direct", dense, np.ones((16, 16, 3, 3), np.float32), host(lanes))
    acc = next(b for b in mod["main"].body.block.alloc_buffers if b.name == "dconv_acc")
    assert [int(v) for v in acc.shape][-1] == lanes


@pytest.mark.parametrize("width, lanes, tile", [(56, 16, 14), (112, 16, 16), (55, 16, 11), (56, 8, 8), (28, 8, 7),
                                                (13, 16, 13), (7, 8, 7), (17, 16, 17), (36, 16, 12)])
def test_group_row_tile(width, lanes, tile):
    from convopt.schedules.tiling import group_row_tile

    assert group_row_tile(width, lanes) == tile


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("name", ["direct", "im2win"])
def test_a_1x1_conv_reads_the_larger_operand_once(name, lanes):
    """Rows outermost when the weights are the smaller operand (each row of the input read once), channel
    blocks outermost when they are the larger one (ResNet-50's last stage: 4 MB of weights against 100 KB
    of input ran 1.5-1.65x faster so on Intel and AMD alike)."""
    from convopt.schedules.conv_spec import ConvSpec
    from convopt.schedules.kernel import scheduled_module

    def parallel_loop(spec):
        weight = np.ones((spec.out_channels, spec.in_channels, 1, 1), np.float32)
        mod, _ = scheduled_module(name, spec, weight, host(lanes))
        return next(line.split()[1] for line in mod.script().splitlines() if "T.parallel" in line
                    and "_fused" in line and ("_b_" in line or "_y_" in line))

    assert parallel_loop(ConvSpec(1, 64, 15, 14, 32, (1, 1))) == "n_y_b_0_fused"  # 2 K weights, 13 K inputs
    assert parallel_loop(ConvSpec(1, 64, 5, 4, 96, (1, 1))) == "n_b_0_y_fused"    # 6 K weights, 1 K inputs
    # up to twice the input, rows too: in a model the input is fresh from the other cores (producer_consumer.py)
    assert parallel_loop(ConvSpec(1, 64, 8, 8, 96, (1, 1))) == "n_y_b_0_fused"    # 6 K weights, 4 K inputs


def test_rows_outermost_up_to_twice_the_input_unless_in_passes():
    assert tiling.rows_outermost(weights=100, inputs=100) and tiling.rows_outermost(weights=200, inputs=100)
    assert not tiling.rows_outermost(weights=201, inputs=100)
    assert tiling.rows_outermost(weights=100, inputs=100, in_passes=True)
    assert not tiling.rows_outermost(weights=150, inputs=100, in_passes=True)  # the prefetched passes stay


@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("name", ["direct", "im2win"])
@pytest.mark.parametrize("spec, l1", [
    (ConvSpec(1, 384, 5, 7, 64, (1, 1)), 8192),                 # 24 K weights, 13 K inputs: blocks outermost
    (ConvSpec(1, 96, 17, 16, 64, (3, 3), (2, 2), (1, 1)), 16384),  # 55 K weights
], ids=lambda v: v.describe() if isinstance(v, ConvSpec) else f"L1 {v // 1024}K")
def test_a_long_reduction_runs_in_l1_sized_passes(spec, l1, name, lanes, blocked, monkeypatch):
    """Where a register tile's weights exceed twice the L1 (here a small one), the reduction runs in passes
    whose weights fit half the L1, each over all the rows (ResNet-50's 1024- and 2048-channel 1x1 convs
    1.1-1.3x, its stride-2 3x3s up to 1.5x on Intel); the result is the same conv."""
    from dataclasses import replace

    from convopt.schedules.kernel import scheduled_module

    from . import conv_cases

    monkeypatch.setattr(conv_cases, "HOST", replace(HOST, caches={**HOST.caches, "L1d": l1}))
    tile = tiling.channel_tile(spec.out_channels // lanes, lanes, lanes, spec.out_width)[0] * lanes  # channels a tile
    taps = spec.kernel[0] * spec.kernel[1]
    chunk = tiling.reduction_chunk(spec.in_channels, tile * taps, l1)
    assert 1 < chunk < spec.in_channels and spec.in_channels % chunk == 0 and 4 * chunk * tile * taps <= l1 // 2
    assert error_against_torch(name, spec, True, True, "relu", lanes=lanes, blocked=blocked) < 1e-5
    weight = np.ones((spec.out_channels, spec.in_channels, *spec.kernel), np.float32)
    block = lanes if blocked else None
    script = scheduled_module(name, spec, weight, host(lanes), in_block=block, out_block=block)[0].script()
    # passes > rows (marked: the next pass's weights are prefetched) > column tiles > a pass's channels (> kernel
    # taps), under the parallel loop; a 1x1's channels unrolled by a few inside (tiling.reduction_unroll)
    kh, kw = spec.kernel
    unroll = tiling.reduction_unroll(chunk) if taps == 1 else 1
    inner = rf":\s*for \w+ in T.unroll\({unroll}\)" if unroll > 1 else ""
    passes = (rf"for \w+ in range\({spec.in_channels // chunk}\):\s*for \w+ in T.serial\({spec.out_height}, "
              rf"annotations={{\"{PREFETCH_NEXT_CHUNK}\"[^\n]*\s*for [^\n]* in T.grid\(\d+, {chunk // unroll}, {kh}, "
              rf"{kw}\){inner}")
    assert "T.parallel(" in script and re.search(passes, script)


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("name", ["direct", "im2win"])
def test_a_reduction_in_passes_over_few_tiles_shares_its_rows_among_the_cores(name, lanes, monkeypatch):
    """Five channel tiles on two cores (mobilenetv2's 960->160 at 7x7: 3 tiles against 2, 21 rows against 14)
    run as ten tasks of 4 and 3 rows (18 against 17): a row-group loop joins the parallel loop, the passes and
    their prefetched rows inside each group; the result is the same conv."""
    from dataclasses import replace

    from convopt.schedules.kernel import scheduled_module

    from . import conv_cases

    spec = ConvSpec(1, 384, 7, 7, 80, (1, 1))  # 5 tiles: 5 x 1 x 16 or 5 x 2 x 8 channels
    monkeypatch.setattr(conv_cases, "HOST", replace(HOST, caches={**HOST.caches, "L1d": 8192}, cores=2))
    assert error_against_torch(name, spec, True, True, "relu", lanes=lanes, blocked=True) < 1e-5
    weight = np.ones((spec.out_channels, spec.in_channels, 1, 1), np.float32)
    script = scheduled_module(name, spec, weight, host(lanes), in_block=lanes, out_block=lanes)[0].script()
    parallel = re.search(r"for (\w+) in T.parallel\((\d+)\)", script)
    assert parallel.group(2) == "10" and parallel.group(1).count("_") >= 3  # tiles x 2 row groups, fused
    assert re.search(rf"for \w+ in range\(\d+\):\s*for \w+ in T.serial\(4, annotations={{\"{PREFETCH_NEXT_CHUNK}\"", script)


def test_row_groups_only_where_the_tiles_alone_divide_badly():
    assert tiling.row_groups(5, 7, 2) == 2 and tiling.row_groups(1, 7, 2) == 2 and tiling.row_groups(3, 14, 2) == 2
    assert tiling.row_groups(16, 7, 2) == 1 and tiling.row_groups(6, 7, 2) == 1 and tiling.row_groups(8, 14, 8) == 1
    assert tiling.row_groups(5, 7, 8) == 7  # 8 cores: a task per row is the most even
    assert tiling.static_makespan([4, 3] * 5, 2) == 18 and tiling.static_makespan([7] * 5, 2) == 21


def test_the_passes_of_a_long_reduction_fit_half_the_l1():
    assert tiling.reduction_chunk(2048, 32, 48 * 1024) == 128 and tiling.reduction_chunk(1024, 32, 32 * 1024) == 128
    assert tiling.reduction_chunk(512, 32 * 9, 48 * 1024) == 16  # ResNet-50's 3x3s: 21 channels' weights fit
    # within twice the L1 one pass: ResNet's 256->1024 (32 KB of weights per tile) measured 15% slower in passes
    assert tiling.reduction_chunk(256, 32, 48 * 1024) is None
    assert tiling.reduction_chunk(2 * 997, 32, 48 * 1024) is None  # no divisor near the L1's share: one pass
    assert tiling.reduction_chunk(48, 32 * 49, 8 * 1024) is None  # passes of fewer than 4 channels: one pass


@pytest.mark.parametrize("channels, per_channel, rows, half_l1, capped", [
    (736, 32, 8, 184, 46),       # 1x1 736->736 at 8 px: 184 channels asked for 46 lines a row, 46 for 11.5
    (2048, 32, 7, 128, 32),      # ResNet-50's 2048->512 at 7 px
    (512, 32 * 9, 7, 16, 4),     # its 3x3 512->512 at 7 px
    (256, 32 * 9, 14, 16, 8),    # its 3x3 256->256 at 14 px
    (1024, 32, 14, 128, 64),
    (2 * 997, 32 * 9, 7, None, None),  # one pass stays one pass
])
def test_passes_spread_their_prefetch_over_the_rows(channels, per_channel, rows, half_l1, capped):
    """Given the rows a pass runs, passes small enough that the next one's weights are prefetched in at most
    PREFETCH_LINES_PER_ROW lines a row (all the tile's streams), else the half-L1 passes."""
    l1, layer = 48 * 1024, {"layer_weights": channels * per_channel * 16, "l2_bytes": 1 << 20}  # weights >= the L2
    assert tiling.reduction_chunk(channels, per_channel, l1, **layer) == half_l1
    chunk = tiling.reduction_chunk(channels, per_channel, l1, **layer, rows=rows)
    assert chunk == capped
    if chunk:
        assert channels % chunk == 0 and chunk >= 4
        assert chunk * per_channel / tiling.LINE_FLOATS / rows <= tiling.PREFETCH_LINES_PER_ROW


def test_pass_rows_are_a_tasks_rows():
    assert tiling.pass_rows(16, 7, 2) == 7 and tiling.pass_rows(5, 7, 2) == 4  # 5 tiles: 2 row groups of 4 and 3


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("spec", [
    ConvSpec(1, 32, 14, 13, 32, (3, 3), (2, 2), (1, 1)),               # ResNet's stride-2 3x3
    ConvSpec(2, 32, 9, 11, 48, (3, 3), (1, 1), (2, 2), (2, 2)),        # dilated, batch 2
    ConvSpec(1, 64, 8, 8, 64, (3, 3), (1, 1), (1, 1), groups=2),       # channel blocks within groups
    ConvSpec(1, 32, 12, 10, 32, (5, 5), (1, 1), (2, 2), groups=32),    # depthwise ("ow" mode): NCHW copy
], ids=lambda s: s.describe())
def test_a_blocked_input_is_padded_in_its_blocks(spec, lanes):
    """Vectorized over output channels, the padded copy of a blocked input keeps its channel blocks (each
    input channel's broadcast reads the line its neighbours read; stride-2 3x3 convs 1.2-1.3x faster);
    column-vectorized kernels keep an NCHW copy, whose rows are their vectors."""
    from convopt.schedules.kernel import scheduled_module

    assert error_against_torch("direct", spec, True, True, "relu", lanes=lanes, blocked=True) < 1e-5
    weight = np.ones((spec.out_channels, spec.in_per_group, *spec.kernel), np.float32)
    mod, _ = scheduled_module("direct", spec, weight, host(lanes), in_block=lanes, out_block=lanes)
    pad = next(b for b in mod["main"].body.block.alloc_buffers if b.name == "dconv_pad")
    channels_vectorized = spec.groups == 1 or spec.out_per_group >= lanes
    assert len(pad.shape) == (5 if channels_vectorized else 4)
    mod, _ = scheduled_module("direct", spec, weight, host(lanes))  # an NCHW input: an NCHW copy
    assert len(next(b for b in mod["main"].body.block.alloc_buffers if b.name == "dconv_pad").shape) == 4


@pytest.mark.parametrize("blocks, lanes, tile", [(2, 16, 2), (6, 16, 2), (3, 16, 3), (15, 16, 3), (5, 16, 1),
                                                 (1, 16, 1), (3, 8, 1), (4, 8, 2), (9, 8, 1)])
def test_channel_tile_balances_weight_loads_and_broadcasts(blocks, lanes, tile):
    """Pairs of blocks where they pair up; threes with AVX-512 (3 x 5 accumulators) where they come in threes
    (a one-block tile made 14 FMAs for 15 loads); one block else. 40 output channels make 3 16-lane blocks:
    the "3x3-s1-c24-o40" case of test_matches_torch runs that tile."""
    from convopt.schedules import tiling

    assert tiling.channel_tile(blocks, lanes, lanes) == (tile, 1)
    assert tile in tiling.channel_tiles(blocks, tile) and 1 in tiling.channel_tiles(blocks, tile)
    assert tiling.column_tile(56, blocks, lanes, lanes) * tile <= tiling.accumulators(lanes)


@pytest.mark.parametrize("blocks, width, lanes, tile", [
    (25, 4, 16, 5), (32, 4, 16, 4), (32, 2, 16, 8), (32, 7, 16, 2), (12, 7, 16, 2), (25, 7, 16, 1), (32, 14, 16, 2),
    (64, 2, 8, 4), (25, 4, 8, 1), (32, 4, 8, 2)])
def test_narrow_rows_widen_the_channel_tile(blocks, width, lanes, tile):
    """A tile never spans rows, so on a row narrower than the accumulators (a 4x4 map: 1 block x 4 columns,
    4 FMA chains) the tile takes more channel blocks instead: the most dividing the blocks whose whole-row tile
    fits the registers beside a weight vector per block and a broadcast; rows that fill half the accumulators keep
    the pairs/threes rule, and the column tile is then the whole row (no guarded tail)."""
    assert tiling.channel_tile(blocks, lanes, lanes, width) == (tile, 1)
    assert tile * (width + 1) + 1 < 2 * tiling.accumulators(lanes)  # accumulators, weights, a broadcast
    widened = tile != tiling.channel_tile(blocks, lanes, lanes)[0]
    if widened:
        assert tiling.column_tile(width, blocks, lanes, lanes) == width
    assert tile in tiling.channel_tiles(blocks, tile)


@pytest.mark.parametrize("name", ["direct", "im2win"])
@pytest.mark.parametrize("lanes", LANES)
def test_narrow_rows_run_the_wide_tile_correctly(name, lanes):
    """80 -> 80 channels at 4x4 (5 blocks of 16 lanes: one 5 x 4 tile; 10 of 8 lanes: the pairs rule), a 1x1
    and a 3x3, blocked and NCHW: the widened tile is the scheduled one and computes the same conv."""
    from convopt.schedules.kernel import scheduled_module

    for spec in (ConvSpec(1, 48, 4, 4, 80, (1, 1)), ConvSpec(1, 48, 4, 4, 80, (3, 3), padding=(1, 1))):
        for blocked in (True, False):
            assert error_against_torch(name, spec, True, True, "relu", lanes=lanes, blocked=blocked) < 1e-5
        tile = tiling.channel_tile(80 // lanes, lanes, lanes, 4)[0]
        assert tile == (5 if lanes == 16 else 2)
        weight = np.ones((spec.out_channels, spec.in_channels, *spec.kernel), np.float32)
        script = scheduled_module(name, spec, weight, host(lanes), in_block=lanes, out_block=lanes)[0].script()
        # the register tile: tile blocks x the 4 columns, unrolled, over a vector of channels
        assert re.search(rf"for \w+ in T.unroll\({tile}\):\s*for \w+ in T.unroll\(4\):\s*"
                         rf"for \w+ in T.vectorized\({lanes}\)", script), script[:3000]


@pytest.mark.parametrize("groups, channels, width, lanes, blocks", [
    (1, 400, 7, 16, 26), (1, 400, 7, 8, 50), (1, 208, 14, 16, 14), (1, 176, 7, 16, 12),
    (1, 400, 4, 16, 25),   # a 4-column row widens the tile to 5 blocks instead
    (1, 80, 14, 16, 5), (1, 112, 28, 16, 7),   # fewer than MIN_PADDED_BLOCKS: the zero block would cost more
    (1, 384, 7, 16, 24), (1, 240, 7, 16, 15),  # pairs or threes already
    (25, 400, 7, 16, 25), (1, 24, 7, 16, 2)])
def test_a_one_block_tile_gets_a_zero_block(groups, channels, width, lanes, blocks):
    """One zero block more where the blocks would leave a one-block register tile (odd, no factor 3, a row
    too wide to widen the tile) and at least MIN_PADDED_BLOCKS of them; never with several groups."""
    assert tiling.output_blocks(groups, channels // groups, lanes, width) == blocks
    if blocks > -(-channels // lanes):
        assert tiling.channel_tile(blocks, lanes, lanes, width)[0] > 1


@pytest.mark.parametrize("name", ["direct", "im2win"])
@pytest.mark.parametrize("lanes", LANES)
def test_a_zero_block_is_computed_and_not_stored(name, lanes):
    """176 -> 176 channels at 7x7 (11 blocks of 16 lanes, 22 of 8; a 1x1 and a 3x3, blocked and NCHW): the
    packed weight has one zero block more with 16 lanes, the tile pairs blocks, the last tile's second block is
    not stored (a guarded epilogue) and the conv is the same."""
    from convopt.schedules.kernel import scheduled_module

    for spec in (ConvSpec(1, 32, 7, 7, 176, (1, 1)), ConvSpec(1, 32, 7, 7, 176, (3, 3), padding=(1, 1))):
        for blocked in (True, False):
            assert error_against_torch(name, spec, True, True, "relu", lanes=lanes, blocked=blocked) < 1e-5
        weight = np.ones((spec.out_channels, spec.in_channels, *spec.kernel), np.float32)
        mod, prepared = scheduled_module(name, spec, weight, host(lanes), in_block=lanes, out_block=lanes)
        blocks = 12 if lanes == 16 else 22
        assert prepared[0].shape[0] == blocks
        assert not prepared[0][11 * 16 // lanes:].any()  # the zero block
        assert re.search(r"for \w+ in T.unroll\(2\):\s*for \w+ in T.unroll\(\d+\):\s*"
                         rf"for \w+ in T.vectorized\({lanes}\)", mod.script())


def test_the_cost_formulas_count_the_zero_block():
    from convopt.cost import formulas

    for name in ("direct", "im2win"):
        flops = formulas.evaluate(name, ConvSpec(1, 400, 7, 7, 400, (1, 1)), 16)["flops"]
        assert flops == pytest.approx(2 * 400 * 416 * 49)
        flops = formulas.evaluate(name, ConvSpec(1, 400, 4, 4, 400, (1, 1)), 16)["flops"]
        assert flops == pytest.approx(2 * 400 * 400 * 16)


def test_forced_ow_mode_dense():
    _run_case(1, 8, 9, 11, 12, 3, 1, 1, 1, 1, True, True, "relu", sched_kw=dict(mode="ow"), oc_block=4)


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_compiles_for_other_x86(isa):
    """Schedule + codegen (no run) for AVX-512 and AVX2 targets."""
    target = OTHER_ISAS[isa]
    for C, O, k, g in [(64, 64, 3, 1), (32, 32, 3, 32)]:
        ob = channel_block(O // g, target.lanes)
        X = te.placeholder((1, C, 14, 14), name="x")
        Wp = te.placeholder(pack_weight(np.zeros((O, C // g, k, k), np.float32), g, ob).shape, name="w")
        out = direct_conv2d_compute(
            X, Wp, None, out_channels=O, kernel=k, stride=1, padding=1, dilation=1,
            groups=g, oc_block=ob, activation="relu",
        )
        sch = tvm.s_tir.Schedule(te.create_prim_func([X, Wp, out]))
        schedule_direct_conv2d(sch, None, target)
        ex = tvm.compile(sch.mod, target=target.tvm)
        assert ("zmm" in ex.mod.inspect_source("asm")) == (isa == "avx512")


# ---------------------------------------------------------------- the design space (MetaSchedule tuning)


def _space_cases():
    from convopt.schedules.conv_spec import ConvSpec

    return [ConvSpec(1, 32, 14, 14, 64, (3, 3), padding=(1, 1)), ConvSpec(1, 64, 9, 9, 32, (1, 1)),
            ConvSpec(1, 32, 4, 4, 80, (1, 1))]  # a narrow row: a widened channel tile (AVX-512)


def _categoricals(trace):
    return [(inst, trace.decisions[inst]) for inst in trace.insts if inst.kind.name == "SampleCategorical"]


@pytest.mark.parametrize("lanes", LANES)
def test_the_default_decisions_are_the_heuristics_tiles(lanes):
    from convopt.schedules import tiling
    from convopt.schedules.kernel import lower_to_primfunc

    for spec in _space_cases():
        weight = np.random.default_rng(0).standard_normal((spec.out_channels, spec.in_channels, *spec.kernel))
        ob = channel_block(spec.out_per_group, lanes)
        blocks = spec.out_channels // ob
        expected = [tiling.channel_tile(blocks, ob, lanes, spec.out_width)[0],
                    tiling.column_tile(spec.out_width, blocks, ob, lanes)]
        if spec.kernel == (1, 1):  # and the depth its channels are unrolled by
            expected.append(tiling.reduction_unroll(spec.in_channels))
        prim, _ = lower_to_primfunc("direct", spec, weight.astype("float32"), bias=False, residual=False,
                                    activation="none", lanes=lanes)
        traced = tvm.s_tir.Schedule(tvm.IRModule({"main": prim}))
        schedule_direct_conv2d(traced, "main", host(lanes))
        chosen = [int(inst.attrs[0][int(decision)]) for inst, decision in _categoricals(traced.trace)]
        assert chosen == expected


def test_another_decision_is_another_correct_kernel():
    from convopt.schedules.kernel import Kernel, lower_to_primfunc

    spec = _space_cases()[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, spec.in_channels, spec.height, spec.width, generator=g)
    w = torch.randn(spec.out_channels, spec.in_channels, 3, 3, generator=g)
    prim, prepared = lower_to_primfunc("direct", spec, w.numpy(), bias=False, residual=False, activation="none",
                                       lanes=8)
    mod = tvm.IRModule({"main": prim})
    default = tvm.s_tir.Schedule(mod)
    schedule_direct_conv2d(default, "main", host(8))
    trace = default.trace
    inst, decision = _categoricals(trace)[-1]  # the column tile
    other = next(i for i in range(len(inst.attrs[0])) if i != int(decision))
    replayed = tvm.s_tir.Schedule(mod)
    trace.with_decision(inst, other, remove_postproc=True).apply_to_schedule(replayed, remove_postproc=True)
    assert replayed.mod.script() != default.mod.script()
    lib = tvm.compile(replayed.mod, target=host(8).tvm)
    kernel = Kernel("direct", spec, lib["main"], prepared, None, False, tvm.cpu())
    expected = torch.nn.functional.conv2d(x, w, padding=1)
    assert _rel(kernel(x).numpy(), expected.numpy()) <= 1e-5


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("name", ["direct", "im2win"])
@pytest.mark.parametrize("spec, unroll", [
    (ConvSpec(1, 64, 6, 7, 32, (1, 1)), 4),               # rows outermost
    (ConvSpec(1, 18, 5, 5, 64, (1, 1)), 2),               # channel blocks outermost; 18 channels: by 2
    (ConvSpec(1, 13, 4, 6, 32, (1, 1)), 1),               # a prime count: not unrolled
    (ConvSpec(1, 32, 8, 8, 32, (3, 3), padding=(1, 1)), None),  # k x k: its loops stay as they were
], ids=lambda v: v.describe() if isinstance(v, ConvSpec) else f"by {v}")
def test_a_1x1_convs_reduction_is_unrolled_by_a_few_channels(spec, unroll, name, lanes):
    """A 1x1 conv's loop over input channels is split by tiling.reduction_unroll and the inner part unrolled
    (each step's blocked-input address computed once for several channels: 256->256 at 14 px 80 -> 73 us on
    Intel AVX-512); k x k convs keep one loop; either way the conv is the same."""
    from convopt.schedules.kernel import scheduled_module

    weight = np.ones((spec.out_channels, spec.in_channels, *spec.kernel), np.float32)
    script = scheduled_module(name, spec, weight, host(lanes), in_block=lanes, out_block=lanes)[0].script()
    unrolled = re.search(r"for \w+, \w+, \w+ in T.grid\((\d+), 1, 1\):\s*for \w+ in T.unroll\((\d+)\):\s*"
                         r"for \w+ in T.unroll\(\d+\):\s*for \w+ in T.unroll\(\d+\):\s*for \w+ in T.vectorized", script)
    if unroll is None:
        assert unrolled is None
    else:
        assert unrolled and (int(unrolled[1]), int(unrolled[2])) == (spec.in_channels // unroll, unroll)
    assert error_against_torch(name, spec, True, False, "relu", lanes=lanes, blocked=True) < 1e-5


# two groups a vector (tiling.paired_groups): 8-channel groups with 16 lanes, 4-channel ones with 8
PAIRED_SPECS = [
    ConvSpec(1, 32, 9, 11, 32, (3, 3), (1, 1), (1, 1)),  # groups: _paired makes them half a vector wide
    ConvSpec(2, 32, 10, 10, 32, (3, 3), (2, 2), (1, 1)),
    ConvSpec(1, 32, 9, 9, 64, (3, 3), (1, 1), (2, 2), (2, 2)),
    ConvSpec(1, 64, 7, 7, 32, (1, 1)),
]


def _paired(spec: ConvSpec, lanes: int) -> ConvSpec:
    from dataclasses import replace

    return replace(spec, groups=spec.out_channels // (lanes // 2))


@pytest.mark.parametrize("blocked", [True, False])
@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("spec", PAIRED_SPECS, ids=lambda s: f"{s.in_channels}->{s.out_channels} {s.kernel} s{s.stride}")
def test_paired_groups_match_torch(spec, lanes, blocked):
    """Groups of half a vector run two a vector (lanes 2i + h, the input interleaved by pairs), blocked or
    NCHW, with bias, residual and an activation."""
    spec = _paired(spec, lanes)
    assert tiling.paired_groups(spec.groups, spec.in_channels, spec.out_channels, lanes)
    assert error_against_torch("direct", spec, True, True, "silu", lanes=lanes, blocked=blocked) < 1e-5


def test_paired_groups_only_where_half_a_vector_and_whole_blocks():
    assert tiling.paired_groups(32, 256, 256, 16) and tiling.paired_groups(32, 128, 128, 8)
    assert tiling.paired_groups(4, 64, 32, 16)                   # any channels in per group
    assert not tiling.paired_groups(19, 152, 152, 16)             # 152 channels: not whole blocks (NCHW)
    assert not tiling.paired_groups(16, 256, 256, 16)             # 16-channel groups fill a vector
    assert not tiling.paired_groups(64, 256, 256, 16)             # 4-channel groups: a quarter
    assert not tiling.paired_groups(1, 8, 8, 16)                  # one group
    assert channel_block(8, 16) == 8                              # (unpaired: a block of half a vector)


@pytest.mark.parametrize("lanes", LANES)
def test_paired_groups_broadcast_the_pair_once_an_fma(lanes):
    """The pair (channel c of both groups) is one 64-bit broadcast of the interleaved input per FMA, and the
    interleaving copy and the epilogue move whole vectors: no vector gathered lane by lane (vpextrd; a
    16-lane read of the lanes 2i + h, in one index, did that in the epilogue)."""
    from convopt.schedules import prefetch
    from convopt.schedules.kernel import scheduled_module

    spec = _paired(ConvSpec(1, 64, 7, 7, 64, (3, 3), (1, 1), (1, 1)), lanes)
    weight = np.ones((spec.out_channels, spec.in_per_group, *spec.kernel), np.float32)
    mod = scheduled_module("direct", spec, weight, host(lanes), in_block=lanes, out_block=lanes)[0]
    lib = prefetch.compile(mod, host(lanes).tvm)
    asm = (lib.mod.imports[0] if lib.mod.imports else lib.mod).inspect_source("asm")
    assert len(re.findall(r"vbroadcastsd", asm)) >= 8 and "vpextrd" not in asm


def test_workspace_of_paired_groups_is_the_interleaved_copy():
    from convopt.cost import formulas
    from convopt.schedules import direct_conv2d

    spec = _paired(ConvSpec(1, 64, 7, 7, 64, (1, 1)), 16)  # no padding: the copy is made all the same
    assert direct_conv2d.workspace_bytes(spec, 16) == 4 * 64 * 7 * 7
    assert formulas.evaluate("direct", spec, 16)["workspace"] == 4 * 64 * 7 * 7
