import copy
import dataclasses

import pytest
import torch
from torch import nn

import convopt
from convopt import CheckError
from convopt import pipeline
from convopt.pipeline import Pass
from tests.conftest import rel_err


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(y.mean(dim=(2, 3))))


def test_inference_result_matches_and_exposes_graph():
    model, x = Small(), torch.randn(2, 3, 8, 8)
    fast = convopt.optimize(model, x)
    assert not fast.training and fast.graph.outputs
    with torch.no_grad():
        assert rel_err(fast(x), model.eval()(x)) <= 1e-6
    assert "dropout" not in str(fast.graph) and "identity" not in str(fast.graph)


def test_state_dict_keys_are_kept_where_passes_keep_weights():
    model, x = Small().eval(), torch.randn(2, 3, 8, 8)
    folded = convopt.optimize(model, x, target="torch")  # fold_conv_bn replaces conv and BN tensors by folded ones
    assert set(folded.state_dict()) == {"conv.folded_weight", "conv.folded_bias", "fc.weight", "fc.bias"}
    fast = convopt.optimize(model, x, target="torch", passes=["canonicalize", "eliminate_dead_code"])
    other = Small().eval()
    missing, unexpected = other.load_state_dict(fast.state_dict(), strict=False)
    assert not unexpected and not missing  # BatchNorm fills in num_batches_tracked itself
    fast.load_state_dict({k: v for k, v in other.state_dict().items() if k in fast.state_dict()})
    with torch.no_grad():
        assert rel_err(fast(x), other(x)) <= 1e-6


def test_a_wrong_pass_is_caught_by_check(monkeypatch):
    def negate_output(graph):  # a "pass" that computes the wrong thing
        from convopt.ir import Op
        from convopt.ir.graph import GraphEditor
        from convopt.ir import ops as O

        ed = GraphEditor(graph, "negate_output")
        for n in graph.nodes:
            ed.keep(n)
        out = graph.outputs[0]
        neg = ed.emit(Op.MUL, [out], O.BinaryAttrs(-1.0), graph.types[out], base="neg", sources=())
        return dataclasses.replace(ed.finish(), outputs=(neg,))

    monkeypatch.setitem(pipeline._GRAPH_PASSES, "inference",
                        (*pipeline._GRAPH_PASSES["inference"], Pass("negate_output", negate_output)))
    with pytest.raises(CheckError, match=r"output 0: relative error .* exceeds 0.0001"):
        convopt.optimize(Small(), torch.randn(1, 3, 8, 8))
    fast = convopt.optimize(Small(), torch.randn(1, 3, 8, 8), check=False)
    assert fast.graph.nodes[-1].name == "neg"
    fast = convopt.optimize(Small(), torch.randn(1, 3, 8, 8), skip_passes=["negate_output"])


class Roll(nn.Module):
    def forward(self, x):
        return torch.roll(x, 1, 2)  # aten.roll: no TVM lowering


def test_default_target_is_tvm_cpu_with_a_per_op_fallback_and_a_warning():
    from convopt.backends.tvm_backend import TVMGraphModule

    fast = convopt.optimize(Small(), torch.randn(1, 3, 8, 8))
    assert isinstance(fast._compiled, TVMGraphModule) and "llvm" in str(fast._compiled.target)
    model = nn.Sequential(nn.Conv2d(3, 12, 1), nn.Flatten(2), nn.Unflatten(2, (4, 4)), Roll())
    with pytest.warns(UserWarning, match=r"%roll \(aten.roll.default\).*strict=True"):
        fast = convopt.optimize(model, torch.randn(1, 3, 4, 4))
    assert isinstance(fast._compiled, TVMGraphModule) and fast.fallbacks == {"roll": "aten.roll.default"}
    trainable = Small()
    trainable.bn.eval()
    assert isinstance(convopt.optimize(trainable, torch.randn(2, 3, 8, 8), mode="train")._compiled,
                      torch.fx.GraphModule)
    with pytest.raises(ValueError, match="target must be"):
        convopt.optimize(Small(), torch.randn(1, 3, 8, 8), target="tpu")


def test_inputs_of_another_shape_get_a_clear_error():
    fast = convopt.optimize(Small(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"input %x: expected f32\[1,3,8,8\], got f32\[2,3,8,8\]"):
        fast(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="got f64"):
        fast(torch.randn(1, 3, 8, 8, dtype=torch.float64))


def test_switching_mode_refuses_instead_of_computing_the_wrong_thing():
    fast = convopt.optimize(Small(), torch.randn(1, 3, 8, 8))
    fast.train()
    with pytest.raises(RuntimeError, match="optimized with mode='inference' and computes eval-mode semantics"):
        fast(torch.randn(1, 3, 8, 8))
    fast.eval()
    fast(torch.randn(1, 3, 8, 8))


def test_train_mode_keeps_parameters_trainable_with_eager_gradients():
    model = Small()
    model.bn.eval()  # transfer learning: frozen BatchNorm statistics
    x = torch.randn(4, 3, 8, 8)
    fast = convopt.optimize(model, x, mode="train")
    assert fast.training and all(p.requires_grad for p in fast.parameters())
    assert any(n.op.value == "dropout" for n in fast.graph.nodes)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        fast(x).sum().backward()
        torch.manual_seed(1)
        model(x).sum().backward()
    grads = dict(fast.named_parameters())
    for name, p in model.named_parameters():
        assert rel_err(grads[name].grad, p.grad) <= 1e-5, name
    fast.eval()
    with pytest.raises(RuntimeError, match="mode='train'"):
        fast(x)


def test_dump_ir_writes_files(tmp_path):
    convopt.optimize(Small(), torch.randn(1, 3, 8, 8), dump_ir=tmp_path)
    assert (tmp_path / "000_capture.ir").exists() and (tmp_path / "001_canonicalize.ir").exists()


def test_environment_selects_passes_at_the_api_boundary(monkeypatch):
    monkeypatch.setenv("CONVOPT_SKIP_PASSES", "fold_conv_bn")
    fast = convopt.optimize(Small(), torch.randn(1, 3, 8, 8), target="torch")
    assert "fold_conv_bn" not in [r.name for r in fast.pass_records] and fast.pass_records
    monkeypatch.setenv("CONVOPT_SKIP_PASSES", "no_such_pass")
    with pytest.raises(ValueError, match="unknown pass 'no_such_pass'"):
        convopt.optimize(Small(), torch.randn(1, 3, 8, 8), target="torch")


def test_target_key_is_reported_and_the_pipeline_knows_it():
    from convopt.target import resolve_target

    fast = convopt.optimize(Small(), torch.randn(1, 3, 8, 8), target="cpu")
    assert fast.target == resolve_target("cpu").key
    assert [r.name for r in fast.pass_records][-3:] == ["select_lowering", "block_layout", "fold_channel_scale"]
    assert convopt.optimize(Small(), torch.randn(1, 3, 8, 8), target="torch").target == "torch"


def test_wrong_call_signatures_say_what_was_expected():
    fast = convopt.optimize(Small().eval(), torch.randn(1, 3, 8, 8))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(TypeError, match=r"takes its inputs positionally, \(x: f32\[1,3,8,8\]\); got keyword argument\(s\) x"):
        fast(x=x)
    with pytest.raises(TypeError, match=r"expected 1 tensor\(s\) \(x: f32\[1,3,8,8\]\); got 2: \(f32\[1,3,8,8\], f32\[2\]\)"):
        fast(x, torch.randn(2))
    with pytest.raises(TypeError, match=r"got 0: \(\)"):
        fast()


def test_plain_tensor_calls_skip_the_pytree_and_anything_else_is_still_checked(monkeypatch):
    from torch.utils import _pytree as pytree

    fast = convopt.optimize(Small().eval(), torch.randn(1, 3, 8, 8))
    x = torch.randn(1, 3, 8, 8)
    expected = fast(x)

    def no_flatten(*args, **kwargs):
        raise AssertionError("the fast path flattened its inputs")

    monkeypatch.setattr(pytree, "tree_flatten", no_flatten)
    assert torch.equal(fast(x), expected)  # tensors of the captured shape and dtype: no pytree, same result
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"input %x: expected f32\[1,3,8,8\], got f32\[1,3,8,9\]"):
        fast(torch.randn(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"expected f32\[1,3,8,8\], got f64\[1,3,8,8\]"):
        fast(x.double())
    with pytest.raises(TypeError, match=r"expected 1 tensor\(s\) \(x: f32\[1,3,8,8\]\) structured as"):
        fast([x])


def test_a_model_in_training_mode_warns_for_inference():
    with pytest.warns(UserWarning, match=r"training mode; optimize\(mode='inference'\) computes eval-mode"):
        convopt.optimize(Small().train(), torch.randn(1, 3, 8, 8))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convopt.optimize(Small().eval(), torch.randn(1, 3, 8, 8))


def test_an_empty_batch_is_refused_for_tvm_and_runs_on_torch():
    model = Small().eval()
    with pytest.raises(ValueError, match=r"input %x is f32\[0,3,8,8\].*zero-size dimension.*target='torch'"):
        convopt.optimize(model, torch.randn(0, 3, 8, 8))
    fast = convopt.optimize(model, torch.randn(0, 3, 8, 8), target="torch")
    assert fast(torch.randn(0, 3, 8, 8)).shape[0] == 0


def _winograd_pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)).eval()
    return model, torch.randn(1, 64, 28, 28)


def test_a_check_failed_with_winograd_rounding_is_rebuilt_without_winograd(monkeypatch):
    """F(4x4, 3x3) rounds its transforms in fp32: on this pair ~5e-6 against eager, the other lowerings ~1e-6.
    With the tolerance between the two, the check fails with Winograd and passes without it."""
    import importlib

    model, x = _winograd_pair()
    fast = convopt.optimize(model, x, fuse_blocks=False)
    assert [n.attrs.lowering for n in fast.graph.nodes if n.op.value == "conv2d"] == ["winograd4"] * 2
    # the errors depend on the ISA's summation order (8 or 16 lanes, FMA) and on eager's kernel: the
    # tolerance is put between the two measured here
    with torch.no_grad():
        want = model(x)
        winograd = rel_err(convopt.optimize(model, x, fuse_blocks=False, lowering="winograd4", check=False)(x), want)
        direct = rel_err(convopt.optimize(model, x, fuse_blocks=False, lowering="direct", check=False)(x), want)
    assert winograd > 2 * direct
    tol = float(f"{(winograd * direct) ** 0.5:.2g}")
    monkeypatch.setitem(importlib.import_module("convopt.optimize")._TOLERANCE, torch.float32, tol)
    with pytest.warns(UserWarning, match=rf"relative error .* exceeds {tol:g} with Winograd convolutions \(2 convs"):
        fast = convopt.optimize(model, x, fuse_blocks=False)
    lowerings = [n.attrs.lowering for n in fast.graph.nodes if n.op.value == "conv2d"]
    assert len(lowerings) == 2 and not {"winograd2", "winograd4"} & set(lowerings)
    with torch.no_grad():
        assert rel_err(fast(x), want) <= tol
    # Winograd the user asked for is kept, and the check's error raised
    with pytest.raises(CheckError, match=f"exceeds {tol:g}"):
        convopt.optimize(model, x, fuse_blocks=False, lowering="winograd4")
    assert convopt.optimize(model, x, fuse_blocks=False, check=False).graph.nodes[0].attrs.lowering == "winograd4"


class _Cancels(nn.Module):
    """(x + 1e4) - 1e4 after a conv: fp32 keeps ~1e-3 of x's value, so eager fp32 is ~2e-4 from the exact result."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return (self.conv(x) + 1e4) - 1e4


class _Stub:
    """An "optimized module" that computes ``fn``, for the check alone."""

    mode = "inference"

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


def test_the_check_allows_what_eager_fp32_itself_rounds_away_judged_against_float64():
    from convopt.optimize import FLOAT64_SLACK, check_against_eager

    torch.manual_seed(0)
    model = _Cancels().eval()
    x = torch.randn(1, 3, 8, 8)
    conv64 = copy.deepcopy(model.conv).double()
    exact = _Stub(lambda x: conv64(x.double()).float())  # the conv alone: exact to fp32 rounding
    with torch.no_grad():
        assert rel_err(exact(x), model(x)) > 1e-4  # eager fp32 is the one that is off
    check_against_eager(model, exact, (x,))
    noisy = _Stub(lambda x: exact(x) + 1e-3 * (FLOAT64_SLACK + 1) * exact(x).abs().max() * torch.randn_like(exact(x)))
    with pytest.raises(CheckError, match="against float64 it is .* eager fp32"):
        check_against_eager(model, noisy, (x,))
