"""Which convs get convopt's kernel and what their epilogues absorb (structure), and that it is exact."""

import pytest
import torch
from torch import nn

import convopt
from convopt.backends.conv_kernels import plan_epilogues, plan_prologues
from convopt.backends.relax_emit import emit
from convopt.ir.ops import Op
from convopt.target import resolve_target
from tests.conftest import rel_err


class Residual(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.conv3 = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        z = torch.relu(self.conv2(y) + x)  # residual add then activation: all in conv2's epilogue
        w = self.conv3(z)
        return nn.functional.relu6(w), w  # w is read twice: its activation cannot be absorbed


def test_epilogue_plan():
    model, x = Residual().eval(), torch.randn(1, 8, 10, 10)
    graph = convopt.optimize(model, x).graph
    plans = plan_epilogues(graph)
    by_scope = {graph.node_map[name].scope: plan for name, plan in plans.items()}
    assert by_scope["conv1"].activation == "relu" and by_scope["conv1"].residual is None
    assert by_scope["conv2"].activation == "relu" and by_scope["conv2"].residual == "x"
    assert len(by_scope["conv2"].absorbed) == 2
    assert by_scope["conv3"].activation == "none" and not by_scope["conv3"].absorbed


def test_fused_kernels_are_exact():
    model, x = Residual().eval(), torch.randn(2, 8, 10, 10)
    fast = convopt.optimize(model, x, target="cpu")
    with torch.no_grad():
        for got, want in zip(fast(x), model(x)):
            assert rel_err(got, want) <= 1e-5


class Activations(nn.Module):
    """Every activation a conv or dense epilogue absorbs, and one it does not (tanh)."""

    def __init__(self, c=16):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(9))
        self.leaky = nn.Conv2d(c, c, 1)
        self.fc1, self.fc2 = nn.Linear(c, 32), nn.Linear(32, 10)

    def forward(self, x):
        acts = [nn.functional.silu, torch.sigmoid, nn.functional.gelu, lambda v: nn.functional.gelu(v, approximate="tanh"),
                nn.functional.hardswish, nn.functional.hardsigmoid, nn.functional.relu6,
                lambda v: nn.functional.leaky_relu(v, 0.2), nn.functional.leaky_relu]
        for conv, act in zip(self.convs, acts):
            x = act(conv(x))
        x = torch.tanh(self.leaky(x))
        return self.fc2(nn.functional.gelu(self.fc1(x.mean((2, 3)))))


def test_activations_are_absorbed_and_exact():
    model, x = Activations().eval(), 3 * torch.randn(2, 16, 9, 11)
    # each conv its own kernel (a host's cost model may fuse consecutive convs into one block kernel)
    fast = convopt.optimize(model, x, target="cpu", fuse_blocks=False)  # checked against eager (rel. error <= 1e-4)
    plans = plan_epilogues(fast.graph)
    by_scope = {fast.graph.node_map[name].scope: plan.activation for name, plan in plans.items()}
    assert [by_scope[f"convs.{i}"] for i in range(9)] == [
        "silu", "sigmoid", "gelu", "gelu_tanh", "hardswish", "hardsigmoid", "relu6", "leaky_relu:0.2",
        "leaky_relu:0.01"]
    assert by_scope["leaky"] == "none" and by_scope["fc1"] == "gelu" and by_scope["fc2"] == "none"
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) < 1e-5


class LayerNorm2d(nn.LayerNorm):
    """timm's norm over each pixel's channels (captured as channel_norm)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Head(nn.Module):
    """conv -> global average pool [-> norm over the channels] -> flatten -> linear [-> act -> layer norm -> linear],
    the heads of ResNet, ConvNeXt and InceptionNeXt."""

    def __init__(self, c=32, norm=False, mlp=False, pool="adaptive", also_return_pooled=False):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
        self.norm = LayerNorm2d(c) if norm else nn.Identity()
        self.fc = nn.Linear(c, 40 if mlp else 10)
        self.mlp = nn.Sequential(nn.GELU(), nn.LayerNorm(40), nn.Linear(40, 10)) if mlp else nn.Identity()
        self.pool, self.also_return_pooled = pool, also_return_pooled

    def forward(self, x):
        y = torch.relu(self.conv(x))
        pooled = y.mean((2, 3), keepdim=True) if self.pool == "mean" else nn.functional.adaptive_avg_pool2d(y, 1)
        out = self.mlp(self.fc(torch.flatten(self.norm(pooled), 1)))
        return (out, pooled) if self.also_return_pooled else out


def _prologues(model, x, **options):
    fast = convopt.optimize(model, x, target="cpu", **options)
    with torch.no_grad():
        got, want = fast(x), model(x)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert rel_err(g, w) <= 1e-5
    graph = fast.graph
    return graph, {graph.node_map[name].scope: plan for name, plan in plan_prologues(graph).items()}


@pytest.mark.parametrize("pool", ["adaptive", "mean"])
def test_head_pool_is_the_dense_kernels_prologue(pool):
    graph, plans = _prologues(Head(pool=pool).eval(), torch.randn(2, 3, 16, 15))
    plan = plans["fc"]
    assert plan.pool and plan.norm is None and graph.node_map[plan.source].op is Op.RELU
    assert [graph.node_map[name].op for name in plan.absorbed] == [Op.RESHAPE, Op.ADAPTIVE_AVG_POOL2D if
                                                                   pool == "adaptive" else Op.MEAN]
    mod, kernels = emit(graph, resolve_target("cpu"))
    dense_uses = [use for use in kernels.values() if use.kind == "dense"]
    assert len(dense_uses) == 1 and dense_uses[0].nodes == [graph.nodes[-1].name]
    assert not any("pool" in gv.name_hint for gv in mod.get_global_vars())  # the pool is never a kernel of its own


def test_head_norms_are_the_dense_kernels_prologue():
    graph, plans = _prologues(Head(norm=True, mlp=True).eval(), torch.randn(1, 3, 16, 16))
    fc, fc2 = plans["fc"], plans["mlp.2"]
    assert fc.pool and graph.node_map[fc.norm].op is Op.CHANNEL_NORM and len(fc.absorbed) == 3
    assert not fc2.pool and graph.node_map[fc2.norm].op is Op.LAYER_NORM and fc2.absorbed == (fc2.norm,)


def test_no_prologue_where_it_must_not_fire():
    # the convs' lowering fixed to one that runs blocked: whether the cost model picks a blocked one for them
    # depends on the host's profile, and the blocked layout is what shows the rule, not the layout, declined
    direct = {"lowering": "direct"}
    # the pooled value is read twice (also returned): the pool stays a kernel of its own
    graph, plans = _prologues(Head(also_return_pooled=True).eval(), torch.randn(1, 3, 16, 16), **direct)
    assert "fc" not in plans and any(n.type.layout for n in graph.nodes)
    # the pool of the model's input, stored NCHW (no conv before it blocks it): not fused
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5)).eval()
    _, plans = _prologues(model, torch.randn(1, 3, 8, 8))
    assert not plans
    # a map larger than every core should read (each core pools all of it): its pool stays a kernel of its own
    # 64 x 64 x 64 x 4 bytes = 1 MB
    graph, plans = _prologues(Head(c=64).eval(), torch.randn(1, 3, 64, 64), **direct)
    assert "fc" in plans
    graph, plans = _prologues(Head(c=64).eval(), torch.randn(1, 3, 65, 64), **direct)
    assert "fc" not in plans and any(n.type.layout for n in graph.nodes)
    # a pool to 2x2 is not a global pool
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.AvgPool2d(6),
                          nn.Flatten(), nn.Linear(128, 5))
    graph, plans = _prologues(model.eval(), torch.randn(1, 3, 16, 16), **direct)
    assert not plans and any(n.type.layout for n in graph.nodes)  # (blocked: the rule, not the layout, declined)


class SqueezeExciteNet(nn.Module):
    """A stem, a depthwise conv, a squeeze-excite scaling its map and a 1x1 projection, then a 3x3 conv (the
    squeeze-excite in the blocked interior). At 12 px a 32 -> 16 projection takes the gate into its weight
    (fold_channel_scale: O KH KW <= H W / 8); a 32 -> 48 one leaves the multiply where it is."""

    def __init__(self, project=16, c=32):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, 8, 1), nn.SiLU(), nn.Conv2d(8, c, 1),
                                nn.Sigmoid())
        self.project = nn.Conv2d(c, project, 1)
        self.head = nn.Conv2d(project, 8, 3, padding=1)

    def forward(self, x):
        y = nn.functional.silu(self.dw(nn.functional.silu(self.stem(x))))
        return self.head(self.project(y * self.se(y)))


def _squeeze_excite(fast):
    (se,) = [n for n in fast.graph.nodes if n.op is Op.FUSED_BLOCK and n.attrs.kind == "squeeze_excite"]
    return se


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
def test_a_squeeze_excite_kernel_scales_the_projection_weight_itself(lanes):
    from convopt.backends.conv_kernels import gated_weight_reader

    torch.manual_seed(0)
    model, x = SqueezeExciteNet().eval(), torch.randn(1, 3, 12, 12)
    fast = convopt.optimize(model, x, target=resolve_target("cpu").with_lanes(lanes), tuning_logs=False,
                            lowering={"project": "direct"})  # (a lowering with a weight channel axis)
    se = _squeeze_excite(fast)
    project = next(n for n in fast.graph.nodes if n.scope == "project")
    assert gated_weight_reader(fast.graph, se.name) == project.name
    where = fast.placement()
    assert where[project.inputs[1]] == f"kernel: epilogue of %{se.name}"  # the weight's scaling: no kernel of its own
    assert "TVM" not in where.values()  # the pool, the gemv convs, the multiply: all in the one kernel
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-5


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
def test_a_squeeze_excite_kernel_scales_the_map_where_the_projection_does_not_take_the_gate(lanes):
    torch.manual_seed(0)
    model, x = SqueezeExciteNet(project=48).eval(), torch.randn(1, 3, 12, 12)
    fast = convopt.optimize(model, x, target=resolve_target("cpu").with_lanes(lanes), tuning_logs=False)
    assert _squeeze_excite(fast).attrs.body[-1].op is Op.MUL
    assert not any(n.op is Op.MUL for n in fast.graph.nodes)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-5


def test_a_gate_left_for_a_projection_without_a_weight_channel_axis_scales_the_map_in_tvm():
    """im2col's packed weight has no input-channel axis: fold_channel_scale leaves the multiply, which the
    block had left out for it, and TVM computes it; the gate is the kernel's output."""
    from convopt.backends.conv_kernels import gated_weight_reader

    torch.manual_seed(0)
    model, x = SqueezeExciteNet().eval(), torch.randn(1, 3, 12, 12)
    fast = convopt.optimize(model, x, target="cpu", tuning_logs=False, lowering={"project": "im2col"})
    se = _squeeze_excite(fast)
    (mul,) = [n for n in fast.graph.nodes if n.op is Op.MUL]
    assert se.name in mul.inputs and gated_weight_reader(fast.graph, se.name) is None
    assert fast.placement()[mul.name] == "TVM"
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-5
