"""convopt.schedules.dense (linear layers) against torch, for both SIMD widths and both ISAs."""

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


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_compiles_for_both_isas(isa):
    asm = _build(4, 64, 48, True, OTHER_ISAS[isa]).mod.inspect_source("asm")
    assert ("zmm" in asm) == (isa == "avx512")
