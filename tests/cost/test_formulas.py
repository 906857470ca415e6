"""The sympy cost terms: they agree with the lowerings' own accounting and with the conv's arithmetic."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convopt.cost.formulas import FORMULAS, evaluate
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.lowerings import LOWERINGS, lowering


@st.composite
def conv_specs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 4]))
    depthwise = draw(st.booleans())
    cin = draw(st.integers(1, 6)) * groups
    cout = cin if depthwise else draw(st.integers(1, 6)) * groups
    if depthwise:
        groups = cin
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    stride = draw(st.sampled_from([(1, 1), (2, 2), (1, 2)]))
    dilation = draw(st.sampled_from([(1, 1), (2, 2)]))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    h = draw(st.integers(1, 24)) + dilation[0] * (kh - 1)
    w = draw(st.integers(1, 24)) + dilation[1] * (kw - 1)
    return ConvSpec(draw(st.integers(1, 2)), cin, h, w, cout, (kh, kw), stride, padding, dilation, groups)


def test_every_lowering_has_formulas():
    assert set(FORMULAS) == set(LOWERINGS)


@settings(max_examples=60, deadline=None)
@given(conv_specs(), st.sampled_from([8, 16]))
def test_workspace_formula_equals_the_lowerings_own_count(spec, lanes):
    for name in LOWERINGS:
        low = lowering(name)
        if low.supports(spec) is None:
            assert evaluate(name, spec, lanes)["workspace"] == low.workspace_bytes(spec, lanes), name


@settings(max_examples=40, deadline=None)
@given(conv_specs())
def test_direct_flops_are_the_convs_multiply_adds(spec):
    terms = evaluate("direct", spec, lanes=8)
    executed = terms["flops"] + terms["narrow_flops"] + terms["slow_flops"]
    assert executed >= 2 * spec.macs  # channel blocks may be padded, never skipped
    from convopt.schedules.tiling import column_tile

    tile = column_tile(spec.out_width, spec.out_channels // 8, 8, 8)
    if (spec.out_per_group % 8 == 0 and spec.out_width % tile == 0) or spec.out_per_group < 4:
        assert executed == 2 * spec.macs


def test_winograd_multiplies_less_than_direct():
    spec = ConvSpec(1, 64, 56, 56, 64, (3, 3), padding=(1, 1))
    direct = evaluate("direct", spec, 8)["flops"]
    assert evaluate("winograd2", spec, 8)["flops"] < 0.5 * direct
    assert evaluate("winograd4", spec, 8)["flops"] < 0.3 * direct


def test_im2win_workspace_is_smaller_than_im2col():
    spec = ConvSpec(1, 64, 56, 56, 64, (3, 3), padding=(1, 1))
    assert evaluate("im2win", spec, 8)["workspace"] < evaluate("im2col", spec, 8)["workspace"]


@pytest.mark.parametrize("lanes,columns", [(8, 4), (16, 8)])
def test_direct_column_tile_is_the_schedules(lanes, columns):
    """The formula's register tile is the one the schedule uses: 2 channel vectors x 4 columns with AVX2,
    x 8 with AVX-512 (tiling.column_tile), so a 56-wide row runs 14 or 7 whole tiles and no padding."""
    from convopt.cost.formulas import DirectColumnTile
    from convopt.schedules.tiling import column_tile

    assert column_tile(56, 8, lanes, lanes) == columns
    assert int(DirectColumnTile(56, 8, lanes, lanes)) == columns
    spec = ConvSpec(1, 64, 56, 56, 128, (3, 3), padding=(1, 1))
    assert evaluate("direct", spec, lanes)["flops"] == 2 * spec.macs


@pytest.mark.parametrize("lanes", [8, 16])
def test_im2win_counts_a_strided_convs_multiply_adds_as_slow(lanes):
    plain = ConvSpec(1, 64, 56, 56, 128, (3, 3), padding=(1, 1))
    strided = ConvSpec(1, 64, 56, 56, 128, (3, 3), (2, 2), padding=(1, 1))
    terms = evaluate("im2win", plain, lanes)
    assert (terms["flops"], terms["slow_flops"]) == (2 * plain.macs, 0)
    terms = evaluate("im2win", strided, lanes)
    assert (terms["flops"], terms["slow_flops"]) == (0, 2 * strided.macs)
