"""The dev models end to end: capture, exact dump round trip, verify, and optimize(target="torch") vs eager."""

import functools

import pytest
import torch

import convopt
from convopt.ir import Op, parse, verify
from tests.conftest import rel_err

DEV_MODELS = ["resnet18", "resnet50", "repvgg_a0", "mobileone_s0", "mobilenetv2_100", "convnext_atto",
              "inception_next_atto", "efficientnet_b0"]
# More families than the issue names, so nothing is tuned to the dev set.
EXTRA_MODELS = ["regnetx_002", "ghostnet_100", "densenet121", "mobilenetv3_small_100", "dla34"]


@functools.lru_cache(maxsize=None)
def model_and_input(name: str):
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).eval(), torch.randn(1, 3, 224, 224)


@pytest.mark.slow
@pytest.mark.parametrize("name", DEV_MODELS + EXTRA_MODELS)
def test_model_round_trips_and_matches_eager(name):
    model, x = model_and_input(name)
    fast = convopt.optimize(model, x, target="torch")  # check=True: raises if rel. error > 1e-4
    g = fast.graph
    verify(g)
    text = str(g)
    assert str(parse(text)) == text
    assert parse(text, constants={c.name: c.data for c in g.constants}) == g
    with torch.no_grad():
        expected = model(x)
        assert rel_err(fast(x), expected) <= 1e-4
        x2 = torch.randn_like(x)  # not only the example input
        assert rel_err(fast(x2), model(x2)) <= 1e-4
    assert g.op_counts().get("conv2d", 0) > 0
    assert not [n for n in g.nodes if n.op is Op.IDENTITY]  # canonicalize removed eval-mode dropout
    if name in DEV_MODELS:  # every op of the dev models is modelled: none stays an opaque torch node
        assert not [n.attrs.target for n in g.nodes if n.op is Op.TORCH]


def assert_layouts_change_only_at_edges(graph, lanes: int) -> int:
    """Every blocked value is read blocked (by a conv that runs blocked, a fused block, a layout-preserving op
    with a blocked output, a spatial mean, or as a 1x1 map) and is no graph output; returns how many values
    are blocked."""
    from convopt.passes.block_layout import channel_operands, is_spatial_mean, runs_blocked

    layout = f"NCHW{lanes}c"

    def is_blocked(t) -> bool:  # a tensor, or a channel split's tuple of parts
        parts = getattr(t, "elements", None)
        return t.layout == layout if parts is None else bool(parts) and all(e.layout == layout for e in parts)

    blocked = {n.name for n in graph.nodes if is_blocked(n.type)}
    assert not blocked & set(graph.outputs)
    for name in blocked:
        node = graph.node_map[name]
        if node.op is Op.CONV2D:
            assert runs_blocked(graph, node, lanes), name
        elif node.op is not Op.FUSED_BLOCK:  # a fused block's kernel writes either layout
            assert set(channel_operands(graph, node)) <= blocked, name
        for reader in graph.users.get(name, ()):
            assert (runs_blocked(graph, reader, lanes) or reader.name in blocked or is_spatial_mean(graph, reader)
                    or (reader.op is Op.FUSED_BLOCK and reader.inputs[0] == name)
                    or graph.types[name].shape[2:] == (1, 1)), (name, reader.name)
    return len(blocked)


@pytest.mark.slow
@pytest.mark.parametrize("name", DEV_MODELS)
def test_dev_model_on_tvm_cpu_matches_eager(name):
    model, x = model_and_input(name)
    fast = convopt.optimize(model, x, target="cpu")  # check=True: relative error <= 1e-4
    with torch.no_grad():
        x2 = torch.randn_like(x)
        assert rel_err(fast(x2), model(x2)) <= 1e-4
    lanes = fast._compiled.target.lanes
    assert assert_layouts_change_only_at_edges(fast.graph, lanes) > 0  # every dev model has convs in a row
    text = str(fast.graph)
    assert f"{{NCHW{lanes}c}}" in text and str(parse(text)) == text
