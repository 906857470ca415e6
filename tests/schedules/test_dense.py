"""convopt.schedules.dense (linear layers) against torch, for both SIMD widths and both ISAs."""

import re

import numpy as np
import pytest
import torch
import tvm
from tvm import te

from convopt.numerics import relative_error
from convopt.schedules import dense, tiling

from .conv_cases import LANES, OTHER_ISAS, host


def _build(rows, k, n, bias, target):
    packed_shape = dense.pack_weight(np.zeros((n, k), np.float32), target.lanes).shape
    x, w = te.placeholder((rows, k), name="x"), te.placeholder(packed_shape, name="w")
    b = te.placeholder((n,), name="b") if bias else None
    out = dense.compute(x, w, b, out_features=n)
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([x, w, *([b] if bias else []), out])}))
    dense.schedule_cpu(sch, "main", target)
    return tvm.compile(sch.mod, target=target.tvm)


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("rows,k,n,bias", [
    (1, 1280, 1000, True),   # a batch-1 classifier: 1000 is not a multiple of the lanes
    (12, 64, 256, True),     # an MLP over 12 pixels: a 6-row tile
    (49, 40, 96, True),      # a token MLP over 7 x 7 tokens: 7-row tiles, the column tiles outermost
    (50, 24, 40, False),     # 5-row tiles, fewer columns than rows: the row tiles outermost
    (7, 33, 20, False),      # odd everything
    (1, 5, 3, True),         # fewer outputs than one vector
])
def test_matches_torch(rows, k, n, bias, lanes):
    target = host(lanes)
    lib = _build(rows, k, n, bias, target)
    x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x.numpy(), dev), tvm.runtime.tensor(dense.pack_weight(w.numpy(), lanes), dev)]
    args += [tvm.runtime.tensor(b.numpy(), dev)] if bias else []
    out = tvm.runtime.empty((rows, n), "float32", dev)
    lib["main"](*args, out)
    expected = torch.nn.functional.linear(x.double(), w.double(), b.double() if bias else None)
    assert relative_error(torch.from_numpy(out.numpy()), expected) < 1e-5


def test_pack_weight():
    w = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    packed = dense.pack_weight(w, 4)
    assert packed.shape == (2, 3, 4)
    np.testing.assert_array_equal(packed[1, :, 0], w[4])
    assert not packed[1, :, 1:].any()


@pytest.mark.parametrize("lanes", LANES)
def test_tiles(lanes):
    assert tiling.dense_tile(1, 63, lanes)[0] == 1 and 63 // tiling.dense_tile(1, 63, lanes)[1] >= 16
    mt, nv = tiling.dense_tile(3136, 16, lanes)
    assert mt == 4 and mt * nv <= tiling.accumulators(lanes) and 16 % nv == 0


@pytest.mark.parametrize("lanes", LANES)
def test_row_tiles_of_token_counts(lanes):
    assert tiling.dense_tile(12, 16, lanes)[0] == 6  # the tiles of before where 6 or 4 rows divide M
    assert tiling.dense_tile(196, 16, lanes)[0] == 4
    for rows, tile in ((49, 7), (25, 5), (35, 7)):  # 7 x 7 and 5 x 5 maps: a one-row tile before
        mt, nv = tiling.dense_tile(rows, 112, lanes)
        assert mt == tile and rows % mt == 0 and mt * nv <= tiling.accumulators(lanes) and 112 % nv == 0
    assert tiling.dense_tile(197, 48, lanes)[0] == 1  # a prime count (a class token's 196 + 1): one-row tiles still


def _tile_loop_order(rows, k, n, lanes):
    """The loop names fused into the parallel tile loop of the scheduled kernel, outermost first."""
    packed_shape = dense.pack_weight(np.zeros((n, k), np.float32), lanes).shape
    x, w = te.placeholder((rows, k), name="x"), te.placeholder(packed_shape, name="w")
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([x, w, dense.compute(x, w, out_features=n)])}))
    dense.schedule_cpu(sch, "main", host(lanes))
    outer = sch.get_loops(sch.get_sblock(dense.GEMM_BLOCK + "_update", "main"))[0]
    return re.findall(r"(?:^|_)([mb])_0", sch.get(outer).loop_var.name)  # e.g. "b_0_m_0_fused"


@pytest.mark.parametrize("lanes", LANES)
def test_the_larger_operand_is_read_once(lanes, monkeypatch):
    assert _tile_loop_order(49, 64, 1792, lanes) == ["b", "m"]  # the weight the larger: its tiles outermost
    assert _tile_loop_order(3136, 64, 256, lanes) == ["m", "b"]  # the input the larger
    assert _tile_loop_order(1, 1280, 1008, lanes) == ["m", "b"]  # a batch-1 classifier: the order of before
    monkeypatch.setattr(tiling, "ROWS_INSIDE_COLUMNS", False)
    assert _tile_loop_order(49, 64, 1792, lanes) == ["m", "b"]


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_compiles_for_both_isas(isa):
    asm = _build(4, 64, 48, True, OTHER_ISAS[isa]).mod.inspect_source("asm")
    assert ("zmm" in asm) == (isa == "avx512")


def _build_with_prologue(x_shape, k, n, prologue, target):
    packed_shape = dense.pack_weight(np.zeros((n, k), np.float32), target.lanes).shape
    x, w, b = te.placeholder(x_shape, name="x"), te.placeholder(packed_shape, name="w"), te.placeholder((n,), name="b")
    out = dense.compute(x, w, b, out_features=n, prologue=prologue)
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([x, w, b, out])}))
    dense.schedule_cpu(sch, "main", target)
    return sch.mod


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("rows,k,n,hw,pool,eps", [
    (1, 1280, 1000, (7, 7), True, None),   # a classifier head: global average pool -> linear
    (1, 320, 40, (7, 7), True, 1e-6),      # ConvNeXt's head: pool -> norm over the channels -> linear
    (2, 100, 24, (3, 5), True, 1e-5),      # two rows; 100 channels: the last block's pad lanes are not read
    (3, 96, 50, None, False, 1e-6),        # InceptionNeXt's head: layer norm -> linear, no pool
])
def test_prologue_matches_torch(rows, k, n, hw, pool, eps, lanes):
    """y = W norm(mean_hw x) + b, with the map stored in channel blocks of the lanes (as block_layout stores
    it) and its pad lanes garbage (the kernel must read only the first k channels)."""
    target = host(lanes)
    blocks = -(-k // lanes)
    x_shape = (rows, blocks, *hw, lanes) if pool else (rows, k)
    stored = 10 * torch.randn(x_shape) + 3  # an offset: the norm's centring matters
    w, b = torch.randn(n, k), torch.randn(n)
    gamma, beta = torch.rand(k) + 0.5, torch.randn(k)
    folded_w, folded_b = dense.fold_norm(w.numpy(), b.numpy(), gamma.numpy(), beta.numpy()) if eps else (w.numpy(), b.numpy())
    lib = tvm.compile(_build_with_prologue(x_shape, k, n, dense.Prologue(pool, eps), target), target=target.tvm)
    dev = tvm.cpu()
    out = tvm.runtime.empty((rows, n), "float32", dev)
    lib["main"](*(tvm.runtime.tensor(a, dev) for a in (stored.numpy(), dense.pack_weight(folded_w, lanes),
                                                        folded_b)), out)
    u = stored.double()
    if pool:
        u = u.permute(0, 1, 4, 2, 3).reshape(rows, blocks * lanes, *hw)[:, :k].mean((2, 3))
    if eps:
        u = torch.nn.functional.layer_norm(u, (k,), gamma.double(), beta.double(), eps)
    expected = torch.nn.functional.linear(u, w.double(), b.double())
    assert relative_error(torch.from_numpy(out.numpy()), expected) < 1e-5


@pytest.mark.parametrize("lanes", LANES)
def test_prologue_runs_once_per_core(lanes):
    """One parallel loop, over one task per core; the pool and the norm's sums inside it (each core computes
    them for its own tiles: one thread-pool wake for the whole head), the pool vectorized over its channel block."""
    target = host(lanes)
    mod = _build_with_prologue((1, 320 // lanes, 7, 7, lanes), 320, 1000, dense.Prologue(True, 1e-6), target)
    lines = mod.script().splitlines()
    parallel = [i for i, line in enumerate(lines) if "T.parallel" in line]
    assert len(parallel) == 1
    extent = int(lines[parallel[0]].split("T.parallel(")[1].split(")")[0])
    assert extent == min(target.cores, 63 // tiling.dense_tile(1, 63, lanes)[1])
    indent = len(lines[parallel[0]]) - len(lines[parallel[0]].lstrip())
    under_parallel = {line.split('T.sblock("')[1].split('"')[0] for line in lines[parallel[0]:]
                      if 'T.sblock("' in line and len(line) - len(line.lstrip()) > indent}
    assert any(f"T.vectorized({lanes})" in line for line in lines)
    assert "dense_out" in under_parallel  # written per tile, inside the task


def test_fold_norm():
    w, b, gamma, beta = (np.random.default_rng(0).standard_normal(s).astype(np.float32) for s in ((5, 3), 5, 3, 3))
    folded_w, folded_b = dense.fold_norm(w, b, gamma, beta)
    u = np.random.default_rng(1).standard_normal(3)
    np.testing.assert_allclose(folded_w @ u + folded_b, w @ (u * gamma + beta) + b, rtol=1e-5)
    np.testing.assert_array_equal(dense.fold_norm(w, None, None, None)[1], np.zeros(5, np.float32))
