"""The prefetch of a chunked conv's next weight chunk and of Winograd's next task's weights (convopt/schedules/
prefetch.py): which kernels get it, which lines it fetches, and that it changes no result."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import tvm
import tvm.sym
from tvm import s_tir, tirx

from convopt.schedules import prefetch, tiling
from convopt.schedules.cpu_fallback import substitute
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.kernel import scheduled_module

from .conv_cases import HOST, LANES, error_against_torch

# a 1x1 and a 3x3 whose register tiles' weights exceed twice an 8 KB / 16 KB L1: reductions in passes
CHUNKED = [(ConvSpec(1, 384, 5, 7, 64, (1, 1)), 8192), (ConvSpec(1, 96, 17, 16, 64, (3, 3), (2, 2), (1, 1)), 16384)]
IDS = ["1x1", "3x3s2"]


def _target(lanes, l1, l2=None):
    caches = {**HOST.caches, "L1d": l1, **({"L2": l2} if l2 else {})}
    return replace(HOST, caches=caches).with_lanes(lanes)


def _module(name, spec, target, blocked=False):
    weight = np.random.default_rng(0).standard_normal((spec.out_channels, spec.in_per_group, *spec.kernel))
    block = target.lanes if blocked else None
    return scheduled_module(name, spec, weight.astype(np.float32), target, bias=True, activation="relu",
                            in_block=block, out_block=block)


def _prefetches(stmt):
    """(address expression, enclosing loops) of every prefetch under ``stmt``."""
    found = []

    def walk(s, loops):
        if isinstance(s, tirx.For):
            walk(s.body, loops + [s])
        elif isinstance(s, tirx.SeqStmt):
            for x in s.seq:
                walk(x, loops)
        elif isinstance(s, s_tir.SBlockRealize):
            walk(s.block.body, loops)
        elif isinstance(s, tirx.IfThenElse):
            walk(s.then_case, loops)
        elif isinstance(s, tirx.Evaluate) and "prefetch" in s.script():
            found.append((s.value.args[1], loops))
    walk(stmt, [])
    return found


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("name", ["direct", "im2win"])
@pytest.mark.parametrize("spec, l1", CHUNKED, ids=IDS)
def test_a_chunked_conv_prefetches_exactly_the_next_chunk_of_each_weight_stream(spec, l1, name, lanes):
    """Over the rows of chunk c, the prefetches cover the lines of chunk c + 1 of the tile's output-channel
    blocks, and after the last chunk the first chunk of the next tile: every line once per row walk, no other."""
    mod, (packed,) = _module(name, spec, _target(lanes, l1))
    func = prefetch.prefetch_next_chunk(mod)["main"]
    (address, loops), = _prefetches(func.body)
    names = [loop.loop_var.name for loop in loops]
    fused, chunk_loop, rows, line, stream = (loops[i] for i in (0, names.index("y") - 1, names.index("y"), -2, -1))
    load = address.args[0] if hasattr(address, "args") else address
    strides = np.cumprod((1,) + packed.shape[:0:-1])[::-1]
    line_floats, (blocks, per_block) = prefetch.LINE_FLOATS, (packed.shape[0], packed[0].size)
    chunks, tile = int(chunk_loop.extent), int(stream.extent)
    analyzer = tvm.sym.Analyzer()

    def line_of(values):
        flat = sum(int(analyzer.simplify(substitute(i, values))) * int(st)
                   for i, st in zip(load.indices, strides))
        return flat // line_floats

    region = per_block // chunks  # floats of one stream's chunk
    for task in range(int(fused.extent)):
        for c in range(chunks):
            got = [line_of({fused.loop_var: task, chunk_loop.loop_var: c, rows.loop_var: y, line.loop_var: j,
                            stream.loop_var: s})
                   for y in range(int(rows.extent)) for j in range(int(line.extent)) for s in range(tile)]
            next_c, next_task = (c + 1, task) if c + 1 < chunks else (0, task + 1)
            starts = [(next_task * tile + s) * per_block + next_c * region for s in range(tile)]
            want = {k for start in starts for k in range(start // line_floats, (start + region - 1) // line_floats + 1)}
            # rows x L lines round each stream's walk up past its region
            over = int(rows.extent) * int(line.extent) - -(-region // line_floats)
            near = {k for start in starts for k in range((start + region - 1) // line_floats + 1,
                                                         (start + region - 1) // line_floats + 2 + over)}
            end = blocks * per_block // line_floats
            assert {k for k in want if k < end} <= set(got)
            assert {k for k in got if k < end} <= want | near
            assert len(got) - len(set(got)) <= tile  # a line shared by two streams' regions at most


@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("name", ["direct", "im2win"])
@pytest.mark.parametrize("spec, l1", CHUNKED, ids=IDS)
def test_prefetching_changes_no_result(spec, l1, name, lanes, blocked, monkeypatch):
    """The kernel built with the prefetches (the assembly has them) is bit-identical to the one built
    without, and matches torch."""
    from . import conv_cases

    target = _target(lanes, l1)
    monkeypatch.setattr(conv_cases, "HOST", replace(HOST, caches=target.caches))
    mod, (packed,) = _module(name, spec, target, blocked)
    with_prefetch, without = prefetch.compile(mod, HOST.tvm), tvm.compile(mod, target=HOST.tvm)
    assert "prefetcht1" in with_prefetch.mod.inspect_source("asm")
    assert "prefetch" not in without.mod.inspect_source("asm")
    shapes = [[int(d) for d in param.ty.shape] for param in mod["main"].params]  # data, weight, bias, output
    data = np.random.default_rng(1).standard_normal(shapes[0]).astype(np.float32)
    bias = np.random.default_rng(2).standard_normal(shapes[2]).astype(np.float32)
    outs = []
    for lib in (with_prefetch, without):
        out = tvm.runtime.empty(shapes[-1], "float32", tvm.cpu(0))
        lib["main"](tvm.runtime.tensor(data), tvm.runtime.tensor(packed), tvm.runtime.tensor(bias), out)
        outs.append(out.numpy())
    assert np.array_equal(outs[0], outs[1])
    assert error_against_torch(name, spec, True, True, "relu", lanes=lanes, blocked=blocked) < 1e-5


def test_a_conv_in_one_pass_gets_no_prefetch():
    """Small weights (one pass over the reduction): nothing marked, the pass leaves the function as it is."""
    spec = ConvSpec(1, 64, 8, 8, 64, (3, 3), padding=(1, 1))
    target = _target(16, 48 * 1024)
    assert tiling.reduction_chunk(64, 32 * 9, 48 * 1024, layer_weights=64 * 64 * 9, l2_bytes=2 << 20) is None
    mod, _ = _module("direct", spec, target)
    assert prefetch.PREFETCH_NEXT_CHUNK not in mod.script()
    assert prefetch.prefetch_next_chunk(mod)["main"].same_as(mod["main"])
    assert "prefetch" not in prefetch.compile(mod, HOST.tvm).mod.inspect_source("asm")


def test_layers_whose_weights_fill_half_the_l2_run_in_passes_to_prefetch_them():
    """A tile's weights within twice the L1 take one pass, unless the layer's weights fill half the L2 (then
    they come from memory in a model, and passes let the next one's weights be prefetched)."""
    l1, l2 = 48 * 1024, 2 << 20
    assert tiling.reduction_chunk(512, 32, l1, layer_weights=512 * 2048, l2_bytes=l2) == 128  # ResNet-50's 4 MB
    assert tiling.reduction_chunk(256, 32, l1, layer_weights=256 * 1024, l2_bytes=l2) == 128  # 1 MB: half the L2
    assert tiling.reduction_chunk(256, 32, l1, layer_weights=256 * 512, l2_bytes=l2) is None  # 512 KB
    assert tiling.reduction_chunk(256, 32, l1, layer_weights=256 * 1024) is None  # no L2 known: as before
    assert tiling.reduction_chunk(6, 32, l1, layer_weights=1 << 20, l2_bytes=l2) is None  # passes under 4 channels


def test_a_model_compiled_for_the_cpu_prefetches_in_its_chunked_kernels(monkeypatch):
    """Through optimize(): a conv whose layer weights fill half the L2 runs in passes whose next weights are
    prefetched (the pass writes its prefetch loop); the result matches eager."""
    import convopt
    from convopt.numerics import relative_error

    written = []
    write = prefetch._prefetch_loop
    monkeypatch.setattr(prefetch, "_prefetch_loop", lambda *a: written.append(1) or write(*a))
    channels = 256
    while 4 * channels * channels < HOST.caches.get("L2", 1 << 20) // 2:
        channels *= 2
    model = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 1), torch.nn.ReLU()).eval()
    x = torch.randn(1, channels, 4, 4)
    fast = convopt.optimize(model, (x,), lowering="direct")
    assert written
    assert relative_error(fast(x), model(x)) < 1e-5


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("name", ["winograd2", "winograd4"])
def test_winograd_prefetches_the_next_tasks_weight_slab_over_its_tile_groups(name, lanes):
    """In the GEMM, task f prefetches line c of each of the next task's output-channel blocks during its tile
    group c mod G: over the task, the whole slab of task f + 1, each line once, nothing else, spread over every
    group. The kernel is bit-identical to the one built without."""
    spec = ConvSpec(1, 40, 12, 10, 48, (3, 3), padding=(1, 1))
    mod, (packed,) = _module(name, spec, _target(lanes, 48 * 1024))
    func = prefetch.prefetch_next_chunk(mod)["main"]
    (address, loops), = _prefetches(func.body)
    task, group, reduction, stream = loops[0], loops[1], loops[2], loops[-1]
    assert task.kind == tirx.ForKind.PARALLEL and reduction.loop_var.name == "rc"
    load = address.args[0] if hasattr(address, "args") else address
    analyzer = tvm.sym.Analyzer()
    alpha, _, blocks, channels, ob = packed.shape
    tile, groups = int(stream.extent), int(group.extent)
    assert groups > 1  # 12 x 10 output pixels in tiles of 2 x 2 or 4 x 4: several groups of tiles
    for f in range(int(task.extent)):
        got = []
        for g in range(groups):
            in_group = [tuple(int(analyzer.simplify(substitute(i, {
                task.loop_var: f, reduction.loop_var: c, stream.loop_var: s, group.loop_var: g})))
                for i in load.indices) for c in range(channels) if c % groups == g for s in range(tile)]
            got += in_group
        nxt = f + 1  # the slab of the next task: (xi, nu, pair of blocks) in the parallel loop's order
        xi, nu, b0 = nxt // (alpha * blocks // tile), nxt // (blocks // tile) % alpha, nxt % (blocks // tile) * tile
        assert sorted(got) == sorted((xi, nu, b0 + s, c, 0) for c in range(channels) for s in range(tile))
    guard = func.script().split("prefetch")[0].rsplit("for rc", 1)[1]
    assert f"rc % {groups}" in guard and "== 0" not in guard  # channel c in the group c mod G, not all in the first
    shapes = [[int(d) for d in param.ty.shape] for param in mod["main"].params]  # data, weight, bias, output
    data = np.random.default_rng(1).standard_normal(shapes[0]).astype(np.float32)
    bias = np.random.default_rng(2).standard_normal(shapes[2]).astype(np.float32)
    outs = []
    for lib in (prefetch.compile(mod, HOST.tvm), tvm.compile(mod, target=HOST.tvm)):
        out = tvm.runtime.empty(shapes[-1], "float32", tvm.cpu(0))
        lib["main"](tvm.runtime.tensor(data), tvm.runtime.tensor(packed), tvm.runtime.tensor(bias), out)
        outs.append(out.numpy())
    assert np.array_equal(outs[0], outs[1])
    assert "prefetcht1" in prefetch.compile(mod, HOST.tvm).mod.inspect_source("asm")
