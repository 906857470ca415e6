"""The CPU schedule of matrix products between activations (schedules/batch_matmul.py): which PrimFuncs it
takes, the values it computes (tails of rows and columns, broadcast batch axes, an epilogue, both operand
orders, 8 and 16 lanes), and an attention block compiled with it against eager."""

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import te

import convopt
from convopt.numerics import relative_error
from convopt.schedules.batch_matmul import BatchMatmul, register_tile
from convopt.target import resolve_target

TARGET = resolve_target("cpu")


def _matmul(a_shape, b_shape, *, scale=None, transposed_b=False, b_first=False):
    """TE's C[..., i, j] = sum_k A[..., i, k] B[..., k, j] (B[..., j, k] if ``transposed_b``), batch axes
    broadcast like Relax's matmul, [* scale]."""
    A, B = te.placeholder(a_shape, name="A"), te.placeholder(b_shape, name="B")
    M, K = a_shape[-2:]
    N = b_shape[-2] if transposed_b else b_shape[-1]
    batch = tuple(max(x, y) for x, y in zip(a_shape[:-2], b_shape[:-2]))
    k = te.reduce_axis((0, K), name="k")

    def index(shape, idx):  # a broadcast axis (extent 1) reads index 0
        return tuple(0 if s == 1 else v for s, v in zip(shape[:-2], idx))

    def product(*idx):
        *b, i, j = idx
        a = A[(*index(a_shape, b), i, k)]
        bb = B[(*index(b_shape, b), j, k)] if transposed_b else B[(*index(b_shape, b), k, j)]
        return te.sum(bb * a if b_first else a * bb, axis=k)

    C = te.compute((*batch, M, N), product, name="matmul")
    out = te.compute(C.shape, lambda *idx: C(*idx) * scale, name="T_multiply") if scale is not None else C
    return te.create_prim_func([A, B, out])


def _run(func, a, b, lanes, out_shape):
    sch = BatchMatmul(lanes).apply(func, TARGET.tvm, False)
    assert sch is not None
    run = tvm.compile(sch.mod, target=TARGET.tvm)["main"]  # a 16-lane schedule runs as two halves on AVX2
    out = tvm.runtime.empty(out_shape, "float32", tvm.cpu())
    run(tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
    return out.numpy(), sch


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("a_shape, b_shape, scale, b_first", [
    ((4, 4, 196, 16), (4, 4, 16, 196), 0.25, False),  # MobileViT's q k^T: 196 columns, a tail of 4
    ((2, 3, 49, 20), (2, 3, 20, 49), None, True),     # odd everything, B read first
    ((64, 32), (32, 48), 2.0, False),                  # no batch axes, whole tiles
    ((2, 1, 13, 8), (1, 3, 8, 40), None, False),      # broadcast batch axes
    ((1, 5, 7), (1, 7, 3), None, False),               # fewer columns than one vector
])
def test_the_products_match_numpy(a_shape, b_shape, scale, b_first, lanes):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64)) * (1.0 if scale is None else scale)
    got, sch = _run(_matmul(a_shape, b_shape, scale=scale, b_first=b_first), a, b, lanes, want.shape)
    assert relative_error(torch.from_numpy(got), torch.from_numpy(want)) <= 1e-6
    text = sch.mod.script()
    assert "T.parallel" in text and f"T.vectorized({lanes})" in text
    if a_shape[-2] % register_tile(a_shape[-2], b_shape[-1], lanes)[0] == 0 and b_shape[-1] % (2 * lanes) == 0:
        assert "_pad" not in text  # whole tiles: no padded copies


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
def test_a_padded_b_is_copied_once_not_per_task(lanes):
    """q k^T over 195 tokens (no whole tiles of rows or columns): B padded to whole column tiles in a parallel
    pass of its own, A's padded rows in each task before its tiles (the copy of B in every task made 14 x 14
    tokens' q k^T 2.5x slower than 192 tokens')."""
    shapes = (4, 4, 195, 16), (4, 4, 16, 195)
    a, b = (np.random.default_rng(1).standard_normal(s).astype(np.float32) for s in shapes)
    got, sch = _run(_matmul(*shapes, scale=0.25), a, b, lanes, (4, 4, 195, 195))
    want = np.matmul(a.astype(np.float64), b.astype(np.float64)) * 0.25
    assert relative_error(torch.from_numpy(got), torch.from_numpy(want)) <= 1e-6
    outermost = {sch.get(blk).name_hint: sch.get(sch.get_loops(blk)[0])
                 for blk in sch.get_child_blocks(sch.get_sblock("root"))}
    tasks = outermost["matmul_update"]
    assert outermost["B_pad"].kind == tvm.tirx.ForKind.PARALLEL and not outermost["B_pad"].same_as(tasks)
    assert outermost["A_pad"].same_as(tasks)


def test_the_register_tile_fits_the_accumulators():
    assert register_tile(196, 196, 16) == (8, 2) and register_tile(196, 196, 8) == (4, 2)
    assert register_tile(3, 5, 16) == (3, 1)


def _row_sum():
    A = te.placeholder((8, 32), name="A")
    k = te.reduce_axis((0, 32), name="k")
    return te.create_prim_func([A, te.compute((8,), lambda i: te.sum(A[i, k], axis=k), name="sum")])


def _matmul_then_softmax_sum():
    A, B = te.placeholder((16, 8), name="A"), te.placeholder((8, 16), name="B")
    k, j = te.reduce_axis((0, 8), name="k"), te.reduce_axis((0, 16), name="j")
    C = te.compute((16, 16), lambda i, n: te.sum(A[i, k] * B[k, n], axis=k), name="matmul")
    return te.create_prim_func([A, B, te.compute((16,), lambda i: te.sum(C[i, j], axis=j), name="rowsum")])


@pytest.mark.parametrize("make, why", [
    (lambda: _matmul((2, 49, 16), (2, 49, 16), transposed_b=True), "B indexed [..., j, k]"),
    (_row_sum, "a sum over the last axis"),
    (_matmul_then_softmax_sum, "a second reduction after the product"),
])
def test_what_it_does_not_take(make, why):
    assert BatchMatmul(16).apply(make(), TARGET.tvm, False) is None, why


def test_it_is_the_first_rule_for_cpu_targets():
    from convopt.backends.tvm_backend import default_rules

    assert isinstance(default_rules(TARGET)[0], BatchMatmul)


class Attention(nn.Module):
    """Self-attention over the pixels of a map, q k^T * scale, softmax, times v (MobileViT's transformer)."""

    def __init__(self, channels=32, heads=2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(channels, 3 * channels), nn.Linear(channels, channels)

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(dim=-1)
        out = self.proj((attn @ v).transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def test_an_attention_block_compiles_with_it_and_matches_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), Attention(), nn.Conv2d(32, 8, 1)).eval()
    x = torch.randn(1, 3, 13, 15)
    fast = convopt.optimize(model, x, tuning_logs=False, strict=True)  # checks against eager
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-5
