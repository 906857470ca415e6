"""The per-op PyTorch fallback (backends/torch_fallback.py): ops TVM can't compile run in PyTorch inside the
compiled TVM module, the rest of the graph stays on TVM."""

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import convopt
from convopt.backends.relax_emit import UnsupportedOpError
from convopt.backends.torch_fallback import FallbackError, function_name
from convopt.ir import parse
from convopt.numerics import relative_error
from tests.conftest import cuda_sources


@torch.library.custom_op("convopt_test::mirror", mutates_args=())
def mirror(x: torch.Tensor, scale: float, shift: torch.Tensor | None = None) -> torch.Tensor:
    """An op TVM can never know: flips the width axis, scales, and adds an optional per-channel shift."""
    if scale < 0 and x.abs().amax() > 1e4:
        raise ValueError("mirror: huge input with a negative scale")
    out = torch.flip(x, [3]) * scale
    return out if shift is None else out + shift.reshape(1, -1, 1, 1)


@mirror.register_fake
def _(x, scale, shift=None):
    return torch.empty_like(x)


class WithCustomOp(nn.Module):
    """conv -> BN -> ReLU -> custom op -> conv -> custom op (with a None input) -> conv: convs on TVM."""

    def __init__(self, scale: float = 0.5):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.conv3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.shift = nn.Parameter(torch.randn(8))
        self.scale = scale

    def forward(self, x):
        y = mirror(torch.relu(self.bn(self.conv1(x))), self.scale, self.shift)
        return self.conv3(mirror(self.conv2(y), 2.0))


def _optimize(model, x, **kwargs):
    with pytest.warns(UserWarning, match="run in PyTorch inside the TVM module"):
        return convopt.optimize(model, x, target="cpu", **kwargs)


def test_a_custom_op_runs_in_torch_and_the_rest_on_tvm():
    torch.manual_seed(0)
    model, x = WithCustomOp().eval(), torch.randn(2, 3, 12, 10)
    fast = _optimize(model, x)  # check=True compares with eager
    assert fast.fallbacks == {"mirror": "convopt_test.mirror.default", "mirror_1": "convopt_test.mirror.default"}
    where = fast.placement()
    assert all(where[n.name].startswith("kernel") for n in fast.graph.nodes if n.op.value == "conv2d")
    assert where["mirror"] == where["mirror_1"] == "PyTorch fallback (no TVM lowering)"
    with torch.no_grad():
        x2 = torch.randn(2, 3, 12, 10)
        assert relative_error(fast(x2), model(x2)) < 1e-5


THREADS_SEEN: list[int] = []


@torch.library.custom_op("convopt_test::note_threads", mutates_args=())
def note_threads(x: torch.Tensor) -> torch.Tensor:
    """The identity, noting how many threads PyTorch's ops would use."""
    THREADS_SEEN.append(torch.get_num_threads())
    return x.clone()


@note_threads.register_fake
def _(x):
    return torch.empty_like(x)


def test_fallback_ops_run_on_one_pytorch_thread_beside_tvm_pool_and_threads_are_restored():
    class Noted(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return note_threads(self.conv(x))

    model, x = Noted().eval(), torch.randn(1, 3, 8, 8)
    fast = _optimize(model, x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        THREADS_SEEN.clear()
        with torch.no_grad():
            assert relative_error(fast(x), model(x)) < 1e-6
        assert THREADS_SEEN == [1, 2]  # in the TVM module, then in eager PyTorch
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_strict_refuses_naming_the_node():
    with pytest.raises(UnsupportedOpError, match=r"node %mirror \(convopt_test.mirror.default.*strict=False"):
        convopt.optimize(WithCustomOp().eval(), torch.randn(1, 3, 8, 8), target="cpu", strict=True)


def test_an_op_with_several_outputs_and_integer_dtypes():
    class MaxOverChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)

        def forward(self, x):
            values, indices = torch.max(self.conv(x), dim=1)  # aten.max.dim: (f32, i64)
            return values * 2, indices

    model, x = MaxOverChannels().eval(), torch.randn(1, 3, 9, 9)
    fast = _optimize(model, x)
    assert list(fast.fallbacks.values()) == ["aten.max.dim"]
    values, indices = fast(x)
    expected_values, expected_indices = model(x)
    assert indices.dtype == torch.int64 and torch.equal(indices, expected_indices)
    assert relative_error(values, expected_values) < 1e-5


def test_equal_nodes_share_one_function_and_different_ones_do_not():
    fast = _optimize(WithCustomOp().eval(), torch.randn(1, 3, 8, 8))
    graph = fast.graph
    names = {n.name: function_name(graph, n) for n in graph.nodes if n.name in fast.fallbacks}
    assert names["mirror"] != names["mirror_1"]  # another scale and another shift input
    assert function_name(parse(str(graph)), graph.node_map["mirror"]) == names["mirror"]  # stable across a parse


def test_summary_and_the_backend_dump_show_the_fallbacks(tmp_path):
    model, x = WithCustomOp().eval(), torch.randn(1, 3, 8, 8)
    fast = _optimize(model, x, dump_ir=tmp_path)
    for _ in range(3):
        fast(x)
    text = fast.summary()
    assert "2 PyTorch fallback" in text and "in convopt kernels" in text
    share = [line for line in text.splitlines() if line.strip().startswith("%mirror_1 ")]
    assert share and "calls" in share[0] and "% of the time" in share[0]
    dump = next(tmp_path.glob("*_backend.ir")).read_text()
    assert "# PyTorch fallback (no TVM lowering)\n  %mirror = " in dump
    assert "# kernel convopt_" in dump
    assert parse(dump) == fast.graph  # the notes are comments: it still parses back


def test_an_error_in_the_fallback_names_the_node():
    model = WithCustomOp(scale=-1.0).eval()
    fast = _optimize(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(Exception, match=r"node %mirror \(convopt_test.mirror.default\) failed in its PyTorch fallback"):
        fast(torch.full((1, 3, 8, 8), 1e9))


def test_a_saved_artifact_with_a_fallback_loads_in_a_new_process(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(2), nn.Unflatten(2, (8, 8))).eval()

    class Rolled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = model, nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(torch.roll(self.body(x), 1, 2))

    rolled, x = Rolled().eval(), torch.randn(1, 3, 8, 8)
    fast = _optimize(rolled, x)
    fast.save(tmp_path / "artifact")
    torch.save({"x": x, "expected": rolled(x).detach()}, tmp_path / "io.pt")
    script = (f"import torch, convopt\nio = torch.load({str(tmp_path / 'io.pt')!r})\n"
              f"fast = convopt.load({str(tmp_path / 'artifact')!r})\n"
              "assert fast.fallbacks == {'roll': 'aten.roll.default'}, fast.fallbacks\n"
              "err = convopt.numerics.relative_error(fast(io['x']), io['expected'])\n"
              "assert err < 1e-5, err\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_torch_target_and_fallback_free_graphs_warn_nothing():
    model, x = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = convopt.optimize(model, x, target="cpu", strict=True)
    assert fast.fallbacks == {} and "PyTorch fallback" not in fast.summary()


def test_fallback_error_is_a_runtime_error():
    assert issubclass(FallbackError, RuntimeError)


def test_a_cuda_module_with_a_fallback_builds():
    """Without a GPU the CUDA build is what can be tested: the fallback call and the CUDA kernels around it."""
    from convopt.backends.tvm_backend import compile_graph
    from convopt.target import resolve_target

    model, x = WithCustomOp().eval(), torch.randn(1, 3, 8, 8)
    graph = convopt.optimize(model, x, target="torch").graph
    executable, _, fallbacks = compile_graph(graph, resolve_target({"kind": "cuda", "arch": "sm_80"}), fallback=True)
    assert sorted(n for nodes in fallbacks.values() for n in nodes) == ["mirror", "mirror_1"]
    sources = cuda_sources(executable)
    assert sources and "__global__" in sources[0]
