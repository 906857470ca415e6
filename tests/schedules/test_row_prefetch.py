"""The next output row's input rows prefetched in a direct conv that reads an NCHW argument
(convopt/schedules/row_prefetch.py): where the pass writes prefetches and to which addresses, where it must
not, and that the kernels it rewrites compute exactly what they did."""

import numpy as np
import pytest
import torch
import tvm
import tvm.sym
from tvm import s_tir, tirx

from convopt.schedules import row_prefetch
from convopt.schedules.conv_spec import ConvSpec, pad_to_blocks
from convopt.schedules.kernel import build_kernel, scheduled_module

from .conv_cases import LANES, host

PATCHIFY = ConvSpec(1, 3, 64, 64, 40, (4, 4), (4, 4))  # convnext's stem at 64 px: 16 output rows of 16


def _scheduled(spec: ConvSpec, lanes: int, *, in_block=None, out_block=None):
    weight = np.random.default_rng(0).standard_normal(
        (spec.out_channels, spec.in_channels // spec.groups, *spec.kernel)).astype(np.float32)
    padded, weight, _ = pad_to_blocks(spec, weight, None, in_block, out_block)
    mod, _ = scheduled_module("direct", padded, weight, host(lanes), in_block=in_block, out_block=out_block)
    return mod


def _prefetches(stmt, loops=()):
    """(the loops around it, the BufferLoad it prefetches) of every llvm.prefetch under ``stmt``."""
    found = []
    if isinstance(stmt, tirx.For):
        found += _prefetches(stmt.body, (*loops, stmt))
    elif isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            found += _prefetches(s, loops)
    elif isinstance(stmt, s_tir.SBlockRealize):
        found += _prefetches(stmt.block.body, loops)
    elif isinstance(stmt, tirx.Evaluate) and isinstance(stmt.value, tvm.ir.Call) \
            and stmt.value.op.name == "tirx.call_llvm_intrin":  # llvm.prefetch(address_of(load), rw, locality, cache)
        found.append((loops, next(a.args[0] for a in stmt.value.args
                                  if isinstance(a, tvm.ir.Call) and a.op.name == "tirx.address_of")))
    return found


def _rewritten(mod):
    return row_prefetch.prefetch_input_rows(mod)


@pytest.mark.parametrize("lanes", LANES)
def test_prefetches_the_next_rows_input_lines_spread_over_the_column_tiles(lanes):
    mod = _rewritten(_scheduled(PATCHIFY, lanes, out_block=lanes))
    (loops, load), = _prefetches(mod["main"].body)
    parallel, columns, line, channel, tap = loops[-5:]
    assert parallel.kind == tirx.ForKind.PARALLEL and int(columns.extent) >= 1
    # 64 floats a row = 4 lines, spread over the row's column tiles
    assert int(line.extent) == -(-4 // int(columns.extent))
    assert (int(channel.extent), int(tap.extent)) == (3, 4)
    analyzer = tvm.sym.Analyzer()
    for p, i, j, c, t in [(0, 0, 0, 0, 0), (3, 1, 0, 2, 3), (14, 0, 0, 1, 2)]:
        values = {parallel.loop_var: p, columns.loop_var: i, line.loop_var: j, channel.loop_var: c, tap.loop_var: t}
        mapping = tirx.IndexMap(list(values), list(load.indices), None)
        index = [int(analyzer.simplify(e)) for e in mapping.map_indices([tirx.const(v, "int64") for v in values.values()])]
        # output row p + 1 reads input rows 4 (p + 1) + t of channel c; line i L + j of each
        assert index == [0, c, 4 * (p + 1) + t, (i * int(line.extent) + j) * 16]
    assert load.source.same_as(mod["main"].params[0])


@pytest.mark.parametrize("lanes", LANES)
def test_the_rewritten_kernel_computes_exactly_what_it_did(lanes):
    spec = ConvSpec(1, 3, 96, 96, 40, (4, 4), (4, 4))
    x, weight, bias = torch.randn(1, 3, 96, 96), torch.randn(40, 3, 4, 4), torch.randn(40)
    target = host(lanes)
    outputs = []
    for enabled in (True, False):
        row_prefetch.PREFETCH_ROWS = enabled
        try:
            outputs.append(build_kernel("direct", spec, weight, bias, target=target, out_block=lanes)(x))
        finally:
            row_prefetch.PREFETCH_ROWS = True
    want = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), stride=4)
    assert torch.equal(outputs[0], outputs[1])
    assert ((outputs[0].double() - want).abs().max() / want.abs().max()).item() < 1e-6


@pytest.mark.parametrize("case", ["padded", "blocked input", "rows too large"])
def test_no_prefetch(case):
    spec, in_block = {
        "padded": (ConvSpec(1, 3, 64, 64, 32, (3, 3), (2, 2), (1, 1)), None),  # reads its padding pass's buffer
        "blocked input": (ConvSpec(1, 16, 32, 32, 32, (3, 3), (1, 1), (0, 0)), 16),  # rows the hardware follows
        "rows too large": (ConvSpec(1, 64, 64, 64, 64, (3, 3), (1, 1), (0, 0)), None),  # 48 KB a row > ROW_BYTES
    }[case]
    mod = _scheduled(spec, 16, in_block=in_block, out_block=16)
    assert _rewritten(mod).same_as(mod) or not _prefetches(_rewritten(mod)["main"].body)


def test_switched_off():
    mod = _scheduled(PATCHIFY, 16, out_block=16)
    row_prefetch.PREFETCH_ROWS = False
    try:
        assert not _prefetches(_rewritten(mod)["main"].body)
    finally:
        row_prefetch.PREFETCH_ROWS = True
