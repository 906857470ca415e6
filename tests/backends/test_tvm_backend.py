"""The TVM backend: per-op numerics against torch, the refusal path, save/load, CUDA code generation."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convopt
from convopt.backends.relax_emit import UnsupportedOpError
from convopt.backends.tvm_backend import compile_graph
from convopt.target import resolve_target
from tests.conftest import cuda_sources, rel_err
from tests.passes.test_fold_conv_bn import randomize_bn


class Lambda(nn.Module):
    def __init__(self, fn, *modules):
        super().__init__()
        self.fn, self.mods = fn, nn.ModuleList(modules)

    def forward(self, x):
        return self.fn(x, *self.mods)


X4 = (2, 6, 9, 11)
CASES = {
    "conv_grouped_dilated_strided": (lambda x, c: c(x), [nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2, groups=2)], X4),
    "conv_nonsquare_nobias": (lambda x, c: c(x), [nn.Conv2d(6, 4, (1, 5), padding=(0, 2), bias=False)], X4),
    "conv_depthwise": (lambda x, c: c(x), [nn.Conv2d(6, 6, 3, padding=1, groups=6)], X4),
    "batch_norm_unfolded": (lambda x, bn: bn(torch.relu(x)), [nn.BatchNorm2d(6)], X4),
    "linear_3d": (lambda x, l: l(x), [nn.Linear(11, 5)], (2, 3, 11)),
    "layer_norm": (lambda x, ln: ln(x), [nn.LayerNorm(11)], X4),
    "group_norm": (lambda x, gn: gn(x), [nn.GroupNorm(3, 6)], X4),
    "activations": (lambda x: F.relu6(x) + F.gelu(x) + F.gelu(x, approximate="tanh") + F.silu(x) + torch.sigmoid(x)
                    + torch.tanh(x) + F.hardswish(x) + F.hardsigmoid(x) + x.clamp(min=-0.5), [], X4),
    "arithmetic": (lambda x: (x * 2 - 1) / 3 + x * x - x / (x * x + 1) + 0.5 - x, [], X4),
    "pools": (lambda x: F.max_pool2d(x, 3, 2, 1) + F.avg_pool2d(x, 3, 2, 1) + F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
              + F.adaptive_avg_pool2d(x, (5, 6)), [], X4),
    "ceil_mode_pool": (lambda x: F.max_pool2d(x, 2, 2, ceil_mode=True), [], X4),
    "mean_softmax": (lambda x: x.mean(dim=(2, 3), keepdim=True) + torch.softmax(x, dim=1), [], X4),
    "shapes": (lambda x: torch.cat([x.permute(0, 1, 3, 2).flatten(2).reshape(2, 6, 11, 9), x.transpose(2, 3)], 1), [], X4),
    "split_getitem": (lambda x: torch.cat(torch.split(x, [2, 4], dim=1)[::-1], dim=1), [], X4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_torch(case):
    fn, modules, shape = CASES[case]
    model = randomize_bn(Lambda(fn, *modules)).eval()
    x = torch.randn(shape)
    fast = convopt.optimize(model, x, target="cpu")  # check=True compares with eager
    with torch.no_grad():
        x2 = torch.randn(shape)
        assert rel_err(fast(x2), model(x2)) <= 1e-5


def test_unsupported_op_is_refused_naming_the_node_when_strict():
    model = Lambda(lambda x, c: torch.roll(c(x), 1, 2), nn.Conv2d(3, 12, 1))
    with pytest.raises(UnsupportedOpError, match=r"node %roll \(aten.roll.default.*target='torch'"):
        convopt.optimize(model, torch.randn(1, 3, 4, 4), target="cpu", strict=True)
    convopt.optimize(model, torch.randn(1, 3, 4, 4), target="torch")  # the documented way out


def test_training_is_torch_only():
    with pytest.raises(ValueError, match="train with target='torch'"):
        convopt.optimize(nn.Conv2d(3, 3, 1), torch.randn(1, 3, 4, 4), target="cpu", mode="train")


def test_outputs_are_torch_tensors_and_inputs_are_checked():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    fast = convopt.optimize(model, torch.randn(1, 3, 8, 8), target="cpu")
    out = fast(torch.randn(1, 3, 8, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, 6, 6)
    with pytest.raises(ValueError, match=r"input %input: expected f32\[1,3,8,8\], got f32\[1,3,9,9\]"):
        fast(torch.randn(1, 3, 9, 9))


def test_save_load_in_a_fresh_process(tmp_path):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))).eval()
    fast = convopt.optimize(model, torch.randn(2, 3, 10, 10), target="cpu")
    folder = fast.save(tmp_path / "artifact")
    assert {p.name for p in folder.iterdir()} == {"model.so", "meta.json", "graph.ir"}
    x = torch.randn(2, 3, 10, 10)
    torch.save(x, tmp_path / "x.pt")
    code = (f"import torch, convopt; m = convopt.load({str(folder)!r}); "
            f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)  # no model code in this process
    with torch.no_grad():
        assert rel_err(torch.load(tmp_path / "y.pt"), model(x)) <= 1e-5
    with pytest.raises(FileNotFoundError, match="not a convopt artifact"):
        convopt.load(tmp_path)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_code_is_generated(arch):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4)).eval()
    # the passes a CUDA target runs are the target-independent ones (no blocked layouts: test_pipeline)
    graph = convopt.optimize(model, torch.randn(1, 3, 16, 16), target="torch").graph
    executable, _, _ = compile_graph(graph, resolve_target({"kind": "cuda", "arch": arch}))
    sources = cuda_sources(executable)
    assert sources and "__global__" in sources[0]


def test_a_graph_prepared_for_the_cpu_is_refused_for_cuda_naming_the_node():
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    # direct forced: blocked between the convs whatever this machine's cost model would pick (on Intel
    # AVX-512 it picked lowerings that run NCHW for this tiny map, and nothing was left to refuse)
    graph = convopt.optimize(model, torch.randn(1, 3, 8, 8), target="cpu", lowering="direct").graph
    assert any(getattr(n.type, "layout", "") for n in graph.nodes)
    with pytest.raises(ValueError, match=r"%conv2d\S* \(conv2d\) was prepared for a CPU target \(NCHW\d+c\)"):
        compile_graph(graph, resolve_target({"kind": "cuda", "arch": "sm_80"}))


def test_layer_norms_run_convopts_row_kernel_on_the_cpu():
    class Tokens(nn.Module):  # layer norms over the last axis: per token, and over a classifier's features
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 32, 3, stride=2), nn.LayerNorm(32)
            self.fc, self.head_norm = nn.Linear(32, 48), nn.LayerNorm(48, eps=1e-6)

        def forward(self, x):
            tokens = self.norm(self.conv(x).flatten(2).transpose(1, 2))
            return self.head_norm(self.fc(tokens.mean(1)))

    model = Tokens().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.head_norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 15, 15)
    fast = convopt.optimize(model, x, strict=True)  # checked against eager
    assert sum(name.startswith("convopt_layer_norm") for name in fast._compiled.kernels) == 2
    with torch.no_grad():
        x2 = torch.randn_like(x)
        assert rel_err(fast(x2), model(x2)) <= 1e-5


def test_channel_norm_builds_for_cuda_as_layer_norm_between_transposes():
    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), LayerNorm2d(8)).eval()
    graph = convopt.optimize(model, torch.randn(1, 3, 16, 16), target="torch").graph
    assert [n.op.value for n in graph.nodes] == ["conv2d", "channel_norm"]
    executable, _, _ = compile_graph(graph, resolve_target({"kind": "cuda", "arch": "sm_80"}))
    assert "__global__" in cuda_sources(executable)[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="running CUDA code needs a GPU")
def test_cuda_runs_when_a_gpu_is_present():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval().cuda()
    x = torch.randn(1, 3, 16, 16, device="cuda")
    fast = convopt.optimize(model, x, target="cuda")
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4
