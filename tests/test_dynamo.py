"""``torch.compile(model, backend="convopt")`` (convopt/dynamo.py)."""

import importlib.metadata
import warnings
from collections import Counter

import pytest
import torch
import torch._dynamo
from torch import nn

from convopt import dynamo
from convopt.optimize import OptimizedModule
from tests.conftest import rel_err
from tests.test_models import DEV_MODELS, model_and_input


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.head(self.stem(x) + x.mean(dim=1, keepdim=True))


class WithGraphBreak(Block):
    def forward(self, x):
        y = self.stem(x)
        if float(y.mean()) > 0.3:  # Python-side, data-dependent: Dynamo breaks the graph here
            y = y * 2
        return self.head(y)


@pytest.fixture
def compiled_modules(monkeypatch):
    """The OptimizedModules convopt compiles for Dynamo's graphs during a test, in order."""
    made = []
    original = dynamo.ConvoptCompiled._compile

    def spy(self, args):
        fast = original(self, args)
        made.append(fast)
        return fast

    monkeypatch.setattr(dynamo.ConvoptCompiled, "_compile", spy)
    return made


def counting_backend(counts: Counter):
    def backend(gm, example_inputs, **kwargs):
        compiled = dynamo.convopt_backend(gm, example_inputs, **kwargs)
        counts["graphs"] += 1
        counts["convopt"] += isinstance(compiled, dynamo.ConvoptCompiled)
        return compiled

    return backend


def test_the_backend_is_registered_by_entry_point_and_by_name():
    points = importlib.metadata.entry_points(group="torch_dynamo_backends")
    assert any(p.name == "convopt" and p.value == "convopt.dynamo:convopt_backend" for p in points)
    from torch._dynamo.backends.registry import lookup_backend

    assert lookup_backend("convopt") is dynamo.convopt_backend


def test_a_small_model_compiles_with_frozen_weights_and_matches_eager():
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(2, 3, 10, 12)
    counts = Counter()
    fast = torch.compile(model, backend=counting_backend(counts))
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) < 1e-5
        x2 = torch.randn(2, 3, 10, 12)
        assert rel_err(fast(x2), model(x2)) < 1e-5
    assert counts == {"graphs": 1, "convopt": 1}


def test_the_compiled_graph_is_convopts_with_weights_as_constants(compiled_modules):
    model, x = Block().eval(), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.compile(model, backend="convopt")(x)
    (fast,) = compiled_modules
    assert isinstance(fast, OptimizedModule) and fast.target != "torch"
    assert [v.type.shape for v in fast.graph.inputs] == [(1, 3, 8, 8)]  # only the real input
    assert "batch_norm" not in fast.graph.op_counts()  # folded: the weights were constants
    assert {"frozen.head.weight", "frozen.stem.0.folded_weight"} <= {c.name for c in fast.graph.constants}


def test_a_graph_break_gives_several_graphs_all_compiled():
    torch.manual_seed(0)
    model, x = WithGraphBreak().eval(), torch.randn(1, 3, 9, 9)
    counts = Counter()
    fast = torch.compile(model, backend=counting_backend(counts))
    with torch.no_grad():
        for sample in (x, -x, x + 1):
            assert rel_err(fast(sample), model(sample)) < 1e-5
    assert counts["graphs"] >= 2 and counts["convopt"] == counts["graphs"]


def test_a_new_input_shape_compiles_again():
    torch.manual_seed(0)
    model = Block().eval()
    counts = Counter()
    fast = torch.compile(model, backend=counting_backend(counts))
    with torch.no_grad():
        for shape in ((1, 3, 8, 8), (2, 3, 12, 10), (3, 3, 7, 9)):
            x = torch.randn(shape)
            assert rel_err(fast(x), model(x)) < 1e-5
    assert counts["graphs"] >= 2 and counts["convopt"] == counts["graphs"]


def test_options_reach_optimize_and_unknown_ones_are_refused(compiled_modules):
    model, x = Block().eval(), torch.randn(1, 3, 8, 8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no "running it as captured"
        fast = torch.compile(model, backend="convopt", options={"lowering": "im2col", "tuning_logs": False})
        assert rel_err(fast(x), model(x)) < 1e-5
    (compiled,) = compiled_modules
    assert {n.attrs.lowering for n in compiled.graph.nodes if n.op.value == "conv2d"} == {"im2col"}
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"unknown convopt option\(s\) \['bogus'\]"):
        with torch.no_grad():
            torch.compile(model, backend="convopt", options={"bogus": 1})(x)
    torch._dynamo.reset()
    with pytest.warns(UserWarning, match="running it as captured"), torch.no_grad():
        out = torch.compile(model, backend="convopt", options={"target": "torch", "lowering": "im2col"})(x)
    assert rel_err(out, model(x)) < 1e-6  # optimize refused the options: the graph ran as captured


def test_a_model_in_training_mode_runs_as_captured_with_a_warning():
    model, x = Block().train(), torch.randn(2, 3, 8, 8)
    expected = model(x)  # batch statistics (this also updates the running ones, like the compiled call)
    model.stem[1].running_mean.zero_()
    model.stem[1].running_var.fill_(1)
    with pytest.warns(UserWarning, match="batch_norm in training mode"):
        out = torch.compile(model, backend="convopt")(x)
    assert rel_err(out, expected) < 1e-5
    torch._dynamo.reset()
    with pytest.raises(Exception, match="training mode"):
        torch.compile(model, backend="convopt", options={"strict": True})(x)


def test_grad_enabled_warns_that_outputs_carry_no_gradients():
    model, x = Block().eval(), torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="carry no gradients"):
        out = torch.compile(model, backend="convopt")(x)
    assert not out.requires_grad
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            torch.compile(model, backend="convopt")(x)


@pytest.mark.slow
@pytest.mark.parametrize("name", DEV_MODELS)
def test_dev_model_through_torch_compile_matches_eager(name):
    model, x = model_and_input(name)
    counts = Counter()
    fast = torch.compile(model, backend=counting_backend(counts))
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4
        x2 = torch.randn_like(x)
        assert rel_err(fast(x2), model(x2)) <= 1e-4
    assert counts["graphs"] >= 1 and counts["convopt"] == counts["graphs"]
