"""The sympy cost terms: they agree with the lowerings' own accounting and with the conv's arithmetic."""

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
@given(conv_specs())
def test_workspace_formula_equals_the_lowerings_own_count(spec):
    for name in LOWERINGS:
        low = lowering(name)
        if low.supports(spec) is None:
            assert evaluate(name, spec)["workspace"] == low.workspace_bytes(spec), name


@settings(max_examples=40, deadline=None)
@given(conv_specs())
def test_direct_flops_are_the_convs_multiply_adds(spec):
    terms = evaluate("direct", spec, lanes=8)
    executed = terms["flops"] + terms["narrow_flops"] + terms["slow_flops"]
    assert executed >= 2 * spec.macs  # channel blocks may be padded, never skipped
    whole_column_tiles = spec.out_width <= 4 or spec.out_width % 4 == 0
    if (spec.out_per_group % 8 == 0 and whole_column_tiles) or spec.out_per_group < 4:
        assert executed == 2 * spec.macs


def test_winograd_multiplies_less_than_direct():
    spec = ConvSpec(1, 64, 56, 56, 64, (3, 3), padding=(1, 1))
    direct = evaluate("direct", spec)["flops"]
    assert evaluate("winograd2", spec)["flops"] < 0.5 * direct
    assert evaluate("winograd4", spec)["flops"] < 0.3 * direct


def test_im2win_workspace_is_smaller_than_im2col():
    spec = ConvSpec(1, 64, 56, 56, 64, (3, 3), padding=(1, 1))
    assert evaluate("im2win", spec)["workspace"] < evaluate("im2col", spec)["workspace"]
