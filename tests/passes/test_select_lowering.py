"""select_lowering: structural before/after, overrides, and where it must not fire."""

import pytest
import torch

from convopt.ir import Op, parse
from convopt.ir import ops as O
from convopt.passes.select_lowering import conv_spec_of, select_lowering
from convopt.schedules.lowerings import LoweringError

from ..cost.profiles import fixed_profile
from ..graphs import Builder


def _graph(weight_is_constant: bool = True):
    b = Builder()
    x = b.input("x", (1, 16, 28, 28))
    w3 = b.const("w3", torch.randn(16, 16, 3, 3)) if weight_is_constant else b.input("w3", (16, 16, 3, 3))
    w1 = b.const("w1", torch.randn(32, 16, 1, 1))
    wd = b.const("wd", torch.randn(32, 1, 13, 13))
    c3 = b.node(Op.CONV2D, [x, w3, None], O.Conv2dAttrs((1, 1), (1, 1), (1, 1), 1), name="c3", scope="block.conv3")
    r = b.node(Op.RELU, [c3], O.NoAttrs(), name="r")
    c1 = b.node(Op.CONV2D, [r, w1, None], O.Conv2dAttrs((2, 2), (0, 0), (1, 1), 1), name="c1", scope="block.conv1")
    cd = b.node(Op.CONV2D, [c1, wd, None], O.Conv2dAttrs((1, 1), (6, 6), (1, 1), 32), name="cd", scope="block.dw")
    return b.graph(cd)


def _lowerings(graph):
    return {n.name: n.attrs.lowering for n in graph.nodes if n.op is Op.CONV2D}


def test_every_conv_gets_a_choice_and_the_predictions():
    before = _graph()
    after = select_lowering(before, lanes=8, profile=fixed_profile())
    assert all(n.attrs.lowering == "" for n in before.nodes if n.op is Op.CONV2D)  # input not mutated
    for n in after.nodes:
        if n.op is Op.CONV2D:
            predicted = dict(n.attrs.predicted_us)
            assert n.attrs.lowering == min(predicted, key=predicted.get).removesuffix("@blocked")
            assert all(t > 0 for t in predicted.values())
    assert [n.op for n in after.nodes] == [n.op for n in before.nodes]
    assert "winograd4" in dict(after.node_map["c3"].attrs.predicted_us)
    assert "winograd4" not in dict(after.node_map["c1"].attrs.predicted_us)  # stride 2


def test_choice_follows_the_profile():
    cheap_fft = fixed_profile(fft={"flops": 0.01, "aux_flops": 0.01})
    assert _lowerings(select_lowering(_graph(), lanes=8, profile=cheap_fft))["cd"] == "fft"
    cheap_im2col = fixed_profile(im2col={"flops": 0.01, "bytes": 0.01})
    assert set(_lowerings(select_lowering(_graph(), lanes=8, profile=cheap_im2col)).values()) == {"im2col"}


def test_dump_shows_the_choice_and_parses_back():
    after = select_lowering(_graph(), lanes=8, profile=fixed_profile())
    text = str(after)
    assert "lowering=" in text and "predicted_us=(('direct'," in text
    assert parse(text, constants={c.name: c.data for c in after.constants}) == after


def test_overrides_by_module_and_by_node_name():
    after = select_lowering(_graph(), lanes=8, profile=fixed_profile(), overrides={"block.conv3": "im2win", "cd": "direct"})
    chosen = _lowerings(after)
    assert chosen["c3"] == "im2win" and chosen["cd"] == "direct"


def test_global_override_applies_where_it_can():
    chosen = _lowerings(select_lowering(_graph(), lanes=8, profile=fixed_profile(), default="winograd4"))
    assert chosen["c3"] == "winograd4"
    assert chosen["c1"] != "winograd4" and chosen["cd"] != "winograd4"  # 1x1 stride 2, 13x13 depthwise


def test_avoided_lowerings_are_never_chosen_unless_forced():
    cheap_winograd = fixed_profile(winograd4={"flops": 0.001, "bytes": 0.001, "aux_flops": 0.001})
    assert _lowerings(select_lowering(_graph(), lanes=8, profile=cheap_winograd))["c3"] == "winograd4"
    after = select_lowering(_graph(), lanes=8, profile=cheap_winograd, avoid=frozenset({"winograd4"}))
    assert "winograd4" not in _lowerings(after).values()
    assert "winograd4" in dict(after.node_map["c3"].attrs.predicted_us)  # still predicted, for the dump
    forced = select_lowering(_graph(), lanes=8, profile=cheap_winograd, avoid=frozenset({"winograd4"}),
                             overrides={"c3": "winograd4"})
    assert _lowerings(forced)["c3"] == "winograd4"


def test_override_that_cannot_run_is_refused_with_the_reason():
    with pytest.raises(LoweringError, match=r"block.dw.*winograd2 can't run it: .*3x3"):
        select_lowering(_graph(), lanes=8, profile=fixed_profile(), overrides={"block.dw": "winograd2"})


def test_unknown_names_are_refused():
    with pytest.raises(LoweringError, match="no conv node or module"):
        select_lowering(_graph(), lanes=8, profile=fixed_profile(), overrides={"block.conv9": "direct"})
    with pytest.raises(LoweringError, match="unknown lowering 'gemm'"):
        select_lowering(_graph(), lanes=8, profile=fixed_profile(), overrides={"block.conv3": "gemm"})
    with pytest.raises(LoweringError, match="unknown lowering"):
        select_lowering(_graph(), lanes=8, profile=fixed_profile(), default="magic")


def test_conv_with_a_runtime_weight_is_left_alone():
    graph = _graph(weight_is_constant=False)
    assert conv_spec_of(graph, graph.node_map["c3"]) is None
    after = select_lowering(graph, lanes=8, profile=fixed_profile())
    assert after.node_map["c3"] == graph.node_map["c3"]
    assert after.node_map["c1"].attrs.lowering != ""


def _depthwise_between_pointwise():
    b = Builder()
    x = b.input("x", (1, 16, 28, 28))
    w1, wd, w2 = (b.const(n, torch.randn(*s)) for n, s in
                  (("w1", (32, 16, 1, 1)), ("wd", (32, 1, 3, 3)), ("w2", (32, 32, 1, 1))))
    c1 = b.node(Op.CONV2D, [x, w1, None], O.Conv2dAttrs((1, 1), (0, 0), (1, 1), 1), name="c1")
    dw = b.node(Op.CONV2D, [c1, wd, None], O.Conv2dAttrs((1, 1), (1, 1), (1, 1), 32), name="dw")
    c2 = b.node(Op.CONV2D, [dw, w2, None], O.Conv2dAttrs((1, 1), (0, 0), (1, 1), 1), name="c2")
    return b.graph(b.node(Op.RELU, [c2], O.NoAttrs(), name="out"))


def test_a_conv_between_blocked_neighbours_is_predicted_blocked():
    profile = fixed_profile()
    profile.coefficients["depthwise@blocked"] = {"flops": 0.01}
    after = select_lowering(_depthwise_between_pointwise(), lanes=8, profile=profile)
    predicted = dict(after.node_map["dw"].attrs.predicted_us)
    assert set(predicted) >= {"direct@blocked", "depthwise@blocked"}
    assert after.node_map["dw"].attrs.lowering == "depthwise"
    assert all(not name.endswith("@blocked") for name in dict(after.node_map["c1"].attrs.predicted_us))  # input NCHW
    # without the block_layout pass every conv is predicted NCHW
    plain = select_lowering(_depthwise_between_pointwise(), lanes=8, profile=profile, blocked_layouts=False)
    assert all(not name.endswith("@blocked") for name in dict(plain.node_map["dw"].attrs.predicted_us))


def _stem_then_pointwise():
    b = Builder()
    x = b.input("x", (1, 3, 56, 56))
    ws, w1 = b.const("ws", torch.randn(32, 3, 3, 3)), b.const("w1", torch.randn(32, 32, 1, 1))
    stem = b.node(Op.CONV2D, [x, ws, None], O.Conv2dAttrs((2, 2), (1, 1), (1, 1), 1), name="stem")
    c1 = b.node(Op.CONV2D, [stem, w1, None], O.Conv2dAttrs((1, 1), (0, 0), (1, 1), 1), name="c1")
    return b.graph(b.node(Op.RELU, [c1], O.NoAttrs(), name="out"))


def test_a_stem_is_charged_the_relayout_of_an_nchw_output_its_blocked_readers_would_pay():
    from convopt.cost.model import predict_all, relayout_seconds

    graph = _stem_then_pointwise()
    spec = conv_spec_of(graph, graph.node_map["stem"])
    profile = fixed_profile()
    for name in ("im2win", "winograd2", "winograd4", "fft", "depthwise"):
        del profile.coefficients[name]
    # im2col predicted faster than direct on NCHW tensors, by less than the relayout its NCHW output costs
    plain = predict_all(spec, profile, 8)
    scale = (plain["direct"] - relayout_seconds(spec, profile, include_input=False) / 2) / plain["im2col"]
    profile.coefficients["im2col"] = {f: v * scale for f, v in profile.coefficients["im2col"].items()}
    after = select_lowering(graph, lanes=8, profile=profile)
    assert after.node_map["stem"].attrs.lowering == "direct"
    predicted = dict(after.node_map["stem"].attrs.predicted_us)
    assert set(predicted) == {"direct", "im2col"}  # its input is NCHW: no "@blocked" prediction
    assert predicted["im2col"] > predicted["direct"]
    # where no layer is blocked (no block_layout pass) the output stays NCHW and im2col wins
    plain_graph = select_lowering(graph, lanes=8, profile=profile, blocked_layouts=False)
    assert plain_graph.node_map["stem"].attrs.lowering == "im2col"


# ---------------------------------------------------------------- measured lowerings (tuning records)

def _near(graph, name):
    """The lowerings select_lowering treats as near the best for node ``name`` (its predictions)."""
    from convopt.cost.model import near_best

    predicted = {k.removesuffix("@blocked"): v for k, v in dict(graph.node_map[name].attrs.predicted_us).items()}
    return near_best(predicted)


def _measure(graph, name, times):
    """A measured table entry for node ``name``'s shape: {variant: seconds}, NCHW variants (blocked_layouts=False)."""
    return {conv_spec_of(graph, graph.node_map[name]).key(): {v: {"relu": t} for v, t in times.items()}}


def test_measurements_of_every_near_lowering_decide():
    predicted_only = select_lowering(_graph(), lanes=8, profile=fixed_profile(), blocked_layouts=False)
    near = _near(predicted_only, "c3")
    assert len(near) > 1, "the fixed profile must leave c3 more than one lowering near the best"
    slowest_predicted = near[-1]
    times = {name: 1e-3 for name in near} | {slowest_predicted: 1e-4}
    measured = _measure(predicted_only, "c3", times)
    after = select_lowering(_graph(), lanes=8, profile=fixed_profile(), blocked_layouts=False, measured=measured)
    node = after.node_map["c3"]
    assert node.attrs.lowering == slowest_predicted != predicted_only.node_map["c3"].attrs.lowering
    assert dict(node.attrs.measured_us) == {name: t * 1e6 for name, t in times.items()}
    assert _lowerings(after) | {"c3": None} == _lowerings(predicted_only) | {"c3": None}  # other shapes untouched
    assert parse(str(after), constants={c.name: c.data for c in after.constants}) == after  # dump round trip


def test_partial_measurements_and_forced_lowerings_leave_the_choice_alone():
    predicted_only = select_lowering(_graph(), lanes=8, profile=fixed_profile(), blocked_layouts=False)
    near = _near(predicted_only, "c3")
    chosen = predicted_only.node_map["c3"].attrs.lowering
    # one near lowering unmeasured: comparing the others would favour whichever were measured
    partial = _measure(predicted_only, "c3", {near[-1]: 1e-6})
    after = select_lowering(_graph(), lanes=8, profile=fixed_profile(), blocked_layouts=False, measured=partial)
    assert after.node_map["c3"].attrs.lowering == chosen and after.node_map["c3"].attrs.measured_us == ()
    # a lowering predicted far off competes only with every near one measured too
    far_only = _measure(predicted_only, "c3", {"fft": 1e-9})
    after = select_lowering(_graph(), lanes=8, profile=fixed_profile(), blocked_layouts=False, measured=far_only)
    assert "fft" not in near and after.node_map["c3"].attrs.lowering == chosen
    far = _measure(predicted_only, "c3", {name: 1e-3 for name in near} | {"fft": 1e-9})
    after = select_lowering(_graph(), lanes=8, profile=fixed_profile(), blocked_layouts=False, measured=far)
    assert after.node_map["c3"].attrs.lowering == "fft" and "fft" in dict(after.node_map["c3"].attrs.measured_us)
    # the user's choice wins over measurements
    fast_other = _measure(predicted_only, "c3", {name: 1e-3 for name in near} | {near[-1]: 1e-6})
    forced = select_lowering(_graph(), lanes=8, profile=fixed_profile(), blocked_layouts=False, measured=fast_other,
                             overrides={"c3": "direct"})
    assert forced.node_map["c3"].attrs.lowering == "direct"
    everywhere = select_lowering(_graph(), lanes=8, profile=fixed_profile(), blocked_layouts=False,
                                 measured=fast_other, default="im2col")
    assert everywhere.node_map["c3"].attrs.lowering == "im2col"


def test_a_stems_measurements_beyond_the_margin_compete_under_their_blocked_output_names():
    """A stem (NCHW input, blocked readers) is measured under "<lowering>@blocked-output" names: a lowering
    predicted far off but measured fastest wins there too, as between NCHW neighbours."""
    from convopt.cost.model import near_best, variant, works_blocked

    graph = _stem_then_pointwise()
    profile = fixed_profile()  # direct predicted 3x slower than it is: beyond the margin
    profile.coefficients["direct"] = {f: 3 * v for f, v in profile.coefficients["direct"].items()}
    predicted_only = select_lowering(graph, lanes=8, profile=profile)
    spec = conv_spec_of(graph, graph.node_map["stem"])
    predicted = dict(predicted_only.node_map["stem"].attrs.predicted_us)
    near = near_best(predicted)
    far = [name for name in predicted if name not in near and works_blocked(name, spec, 8)]
    assert far == ["direct"]
    times = {name: 1e-3 for name in near} | {far[0]: 1e-9}
    measured = {spec.key(): {variant(name, spec, 8, False, blocked_output=True): {"relu": t}
                             for name, t in times.items()}}
    assert any(v.endswith("@blocked-output") for v in measured[spec.key()])
    after = select_lowering(graph, lanes=8, profile=profile, measured=measured)
    assert after.node_map["stem"].attrs.lowering == far[0]


def _squeeze_excite():
    b = Builder()
    x = b.input("x", (1, 32, 1, 1))  # a pooled map
    y = b.input("y", (1, 32, 2, 2))
    reduce = b.node(Op.CONV2D, [x, b.const("w1", torch.randn(8, 32, 1, 1)), None], O.Conv2dAttrs((1, 1), (0, 0), (1, 1), 1),
                    name="reduce", scope="se.conv_reduce")
    wide = b.node(Op.CONV2D, [y, b.const("w2", torch.randn(8, 32, 1, 1)), None], O.Conv2dAttrs((1, 1), (0, 0), (1, 1), 1),
                  name="wide")
    return b.graph(reduce, wide)


def test_a_1x1_conv_on_one_pixel_runs_as_gemv_by_rule():
    after = select_lowering(_squeeze_excite(), lanes=8, profile=fixed_profile())
    assert _lowerings(after) == {"reduce": "gemv", "wide": after.node_map["wide"].attrs.lowering}
    assert after.node_map["reduce"].attrs.predicted_us == ()  # a rule: nothing predicted
    assert after.node_map["wide"].attrs.lowering != "gemv" and after.node_map["wide"].attrs.predicted_us  # 2x2 map
    assert parse(str(after), constants={c.name: c.data for c in after.constants}) == after


def test_an_override_beats_the_gemv_rule_and_gemv_can_be_forced_only_where_it_runs():
    forced = select_lowering(_squeeze_excite(), lanes=8, profile=fixed_profile(), overrides={"se.conv_reduce": "im2col"})
    assert _lowerings(forced)["reduce"] == "im2col"
    with pytest.raises(LoweringError, match="gemv can't run.*one-pixel map"):
        select_lowering(_squeeze_excite(), lanes=8, profile=fixed_profile(), overrides={"wide": "gemv"})


def test_a_lowering_chosen_for_a_conv_inside_a_forced_fused_block_is_refused_by_name():
    import convopt
    from torch import nn
    from convopt.pipeline import PassError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU(),
                          nn.Conv2d(64, 16, 1)).eval()
    x = torch.randn(1, 16, 12, 12)
    kept = convopt.optimize(model, x, tuning_logs=False, lowering={"2": "depthwise"}, check=False)
    assert not any(n.op is Op.FUSED_BLOCK for n in kept.graph.nodes)  # the pinned conv's block stays unfused
    assert {n.scope: n.attrs.lowering for n in kept.graph.nodes if n.op is Op.CONV2D}["2"] == "depthwise"
    with pytest.raises(PassError, match=r"lowering override '2': that conv runs inside fused block %block_\w+"):
        convopt.optimize(model, x, tuning_logs=False, lowering={"2": "depthwise"}, fuse_blocks={"0": True})


def _wide_chain(convs: int, channels: int):
    b = Builder()
    value = b.input("x", (1, channels, 14, 14))
    for i in range(convs):
        w = b.const(f"w{i}", torch.randn(channels, channels, 3, 3))
        value = b.node(Op.CONV2D, [value, w, None], O.Conv2dAttrs((1, 1), (1, 1), (1, 1), 1), name=f"c{i}")
    return b.graph(value)


def test_weights_beyond_the_l3_are_charged_their_reads_from_memory():
    """Winograd F(4,3) ahead when its 4x weights stay cached; F(2,3) (1.8x) or a lowering without expanded
    weights once the model's packed weights exceed the L3 and every call reads them from memory."""
    from convopt.cost.formulas import evaluate

    cheap = {"flops": 0.2, "aux_flops": 0.2, "bytes": 0.01}
    cheap_f4 = fixed_profile(winograd4=cheap, winograd2=cheap)  # F(4,3) ahead on fewer GEMM flops
    spec = conv_spec_of(_wide_chain(1, 256), _wide_chain(1, 256).node_map["c0"])
    f4, direct = evaluate("winograd4", spec, 8)["weights"], evaluate("direct", spec, 8)["weights"]
    assert f4 == 4 * direct == 4 * 4 * 256 * 256 * 9

    few = select_lowering(_wide_chain(2, 256), lanes=8, profile=cheap_f4)  # 2 x 9.4 MB packed: fits 32 MB
    assert set(_lowerings(few).values()) == {"winograd4"}
    many = select_lowering(_wide_chain(8, 256), lanes=8, profile=cheap_f4)  # 8 x 9.4 MB: from memory
    assert set(_lowerings(many).values()) == {"winograd2"}
    node = many.node_map["c0"]
    stream = f4 / cheap_f4.bandwidth * 1e6
    predicted = dict(node.attrs.predicted_us)
    assert predicted["winograd4"] == pytest.approx(dict(few.node_map["c0"].attrs.predicted_us)["winograd4"] + stream,
                                                   rel=1e-3)
    huge_l3 = fixed_profile(winograd4=cheap, winograd2=cheap)
    huge_l3.caches["L3"] = 1 << 30  # a large L3 (the Intel host's 480 MB): the weights stay cached
    assert set(_lowerings(select_lowering(_wide_chain(8, 256), lanes=8, profile=huge_l3)).values()) == {"winograd4"}


def test_measured_times_are_charged_the_weight_reads_too():
    cheap_f4 = fixed_profile(winograd4={"flops": 0.2, "aux_flops": 0.2, "bytes": 0.01})
    graph = _wide_chain(8, 256)
    spec = conv_spec_of(graph, graph.node_map["c0"])
    # measured alone, F(4,3) 10% faster than F(2,3) and direct: in a model streaming its weights it loses
    times = {"winograd4": 0.9e-3, "winograd2": 1e-3, "direct": 1e-3, "im2win": 1e-3, "im2col": 1e-3, "fft": 1e-3}
    measured = {spec.key(): {name: {"none": t} for name, t in times.items()}}
    after = select_lowering(graph, lanes=8, profile=cheap_f4, blocked_layouts=False, measured=measured)
    node = after.node_map["c0"]
    assert node.attrs.lowering != "winograd4" and dict(node.attrs.measured_us)
    assert dict(node.attrs.measured_us)["winograd4"] > 900  # us: its weight reads added


def test_a_slower_measured_weight_stream_turns_the_choice_to_the_smaller_weights():
    """F(4,3) measured faster alone by 1.5x the difference of its weight reads at the copy bandwidth: it wins
    there, and loses where kernels were measured to stream weights at half that rate (cost/weight_stream.py)."""
    from dataclasses import replace

    from convopt.cost.model import packed_weight_bytes

    profile = fixed_profile()
    graph = _wide_chain(8, 256)  # 8 x 9.4 MB of F(4,3) weights: beyond the L3
    spec = conv_spec_of(graph, graph.node_map["c0"])
    extra = (packed_weight_bytes("winograd4", spec, 8) - packed_weight_bytes("winograd2", spec, 8)) / profile.bandwidth
    times = {"winograd2": 1e-3, "winograd4": 1e-3 - 1.5 * extra, "direct": 9e-3, "im2win": 9e-3, "im2col": 9e-3,
             "fft": 9e-3}
    measured = {spec.key(): {name: {"none": t} for name, t in times.items()}}
    at_copy = select_lowering(graph, lanes=8, profile=profile, blocked_layouts=False, measured=measured)
    assert set(_lowerings(at_copy).values()) == {"winograd4"}
    slower = replace(profile, stream_bandwidth=profile.bandwidth / 2)
    at_half = select_lowering(graph, lanes=8, profile=slower, blocked_layouts=False, measured=measured)
    assert set(_lowerings(at_half).values()) == {"winograd2"}
