"""Sums that start at -0.0 (convopt/schedules/signed_zero_init.py): the init blocks it rewrites, the stores it
must leave alone, that the kernels compute what they computed from +0.0, and the memset it exists to remove."""

import math

import numpy as np
import pytest
import torch
import tvm
from tvm import te, tirx

from convopt.schedules import prefetch, signed_zero_init
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.kernel import build_kernel, scheduled_module

from .conv_cases import HOST, LANES, OTHER_ISAS, host

STEM = ConvSpec(1, 3, 32, 32, 32, (3, 3), (2, 2), (1, 1))  # a stem's 3 channels: a short sum per tile


def _float_constants(stmt) -> list[float]:
    """The float constants stored by the blocks of ``stmt``, by block name: {name: [values]}."""
    found = {}

    def visit(s, block):
        if isinstance(s, tirx.BufferStore) and isinstance(s.value, tirx.FloatImm):
            found.setdefault(block, []).append(s.value.value)
        elif isinstance(s, tirx.For):
            visit(s.body, block)
        elif isinstance(s, tirx.SeqStmt):
            for part in s.seq:
                visit(part, block)
        elif isinstance(s, tvm.s_tir.SBlockRealize):
            visit(s.block.body, s.block.name_hint)

    visit(stmt, None)
    return found


def _rewritten(mod):
    return signed_zero_init.signed_zero_init(mod)["main"]


def _direct_module(spec: ConvSpec, lanes: int):
    w = np.ones((spec.out_channels, spec.in_per_group, *spec.kernel), np.float32)
    mod, _ = scheduled_module("direct", spec, w, host(lanes), bias=True, activation="relu", out_block=lanes)
    return mod


@pytest.mark.parametrize("lanes", LANES)
def test_the_accumulator_init_starts_at_negative_zero(lanes):
    before = _float_constants(_direct_module(STEM, lanes)["main"].body)
    after = _float_constants(_rewritten(_direct_module(STEM, lanes)).body)
    assert before["dconv_acc_init"] == [0.0] and math.copysign(1.0, before["dconv_acc_init"][0]) > 0
    assert after["dconv_acc_init"] == [0.0] and math.copysign(1.0, after["dconv_acc_init"][0]) < 0
    # the padding's zeros are values the conv reads, not a sum's start: left alone
    assert {k: v for k, v in after.items() if k != "dconv_acc_init"} == \
        {k: v for k, v in before.items() if k != "dconv_acc_init"}


def _reduction(init_of: str):
    """A row sum (float32 +0.0 init), a row max (-inf init) or an int32 row sum, scheduled with its init
    decomposed into a block of its own."""
    dtype = "int32" if init_of == "int_sum" else "float32"
    x = te.placeholder((4, 8), dtype, name="x")
    k = te.reduce_axis((0, 8), name="k")
    reducer = te.max if init_of == "max" else te.sum
    out = te.compute((4,), lambda i: reducer(x[i, k], axis=k), name="out")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, out]))
    block = sch.get_sblock("out")
    sch.decompose_reduction(block, sch.get_loops(block)[1])
    return sch.mod


def test_a_float_sum_is_rewritten_and_other_inits_are_not():
    assert _rewritten(_reduction("sum")).script().count("T.float32(-0.0)") == 1
    for kind in ("max", "int_sum"):
        mod = _reduction(kind)
        assert _rewritten(mod).same_as(mod["main"]), kind  # -inf and integer 0: the function itself back


def test_switched_off_it_changes_nothing(monkeypatch):
    monkeypatch.setattr(signed_zero_init, "NEGATIVE_ZERO", False)
    mod = _reduction("sum")
    assert _rewritten(mod).same_as(mod["main"])


@pytest.mark.parametrize("name,spec", [
    ("direct", STEM),
    ("direct", ConvSpec(1, 16, 9, 9, 32, (1, 1))),
    ("im2win", ConvSpec(1, 16, 10, 10, 32, (3, 3), padding=(1, 1))),
    ("im2col", ConvSpec(1, 16, 8, 8, 32, (1, 1))),
])
@pytest.mark.parametrize("lanes", LANES)
def test_the_kernels_compute_what_they_did_from_positive_zero(name, spec, lanes, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec.batch, spec.in_channels, spec.height, spec.width, generator=g)
    x[:, :, :3] = 0.0  # rows of exact zeros: +0 products, the case where the start's sign could show
    w = torch.randn(spec.out_channels, spec.in_per_group, *spec.kernel, generator=g)
    b = torch.randn(spec.out_channels, generator=g)

    def run():
        return build_kernel(name, spec, w, b, activation="relu", target=host(lanes), out_block=lanes)(x).numpy()

    new = run()
    monkeypatch.setattr(signed_zero_init, "NEGATIVE_ZERO", False)
    old = run()
    assert np.array_equal(new, old)  # bit for bit (the one difference the pass allows, -0 for +0, compares equal)
    ref = torch.relu(torch.nn.functional.conv2d(x, w, b, spec.stride, spec.padding)).numpy()
    assert np.abs(new - ref).max() / np.abs(ref).max() < 1e-5


@pytest.mark.parametrize("isa", sorted(OTHER_ISAS))
def test_no_memset_left_in_the_tile_loop(isa, monkeypatch):
    """The point of the pass: LLVM merges a tile's +0.0 stores into a memset call its DSE can't remove (with
    AVX-512's 1 KB tiles; AVX2's 256-byte tiles got stores either way)."""
    target = OTHER_ISAS[isa]
    w = np.ones((STEM.out_channels, STEM.in_per_group, *STEM.kernel), np.float32)

    def asm():
        mod, _ = scheduled_module("direct", STEM, w, target, bias=True, activation="relu", out_block=target.lanes)
        return prefetch.compile(mod, target.tvm).mod.inspect_source("asm")

    assert "memset" not in asm()
    monkeypatch.setattr(signed_zero_init, "NEGATIVE_ZERO", False)
    if isa == "avx512":  # without it (if LLVM stops making the memset, the pass is no longer needed)
        assert "memset" in asm()


def test_it_runs_in_every_cpu_build():
    assert HOST.is_cpu
    assert signed_zero_init.signed_zero_init in prefetch._pipeline()[0].passes
