"""The design space of the written-out CPU fused kernels (schedules/fused_space.py): each point is a
different kernel computing the same result, the default point is the kernel optimize() emits, knob values
that give the same kernel are left out, and records made for another space are refused."""

import itertools

import numpy as np
import pytest
import torch
import tvm
from torch import nn

import convopt
from convopt.numerics import relative_error
from convopt.schedules import fused_space
from convopt.schedules.fused_space import DEFAULT, Tiles
from convopt.target import resolve_target
from convopt.tuning.tasks import extract_tasks

from ..passes.test_fuse_blocks import ConvNeXtBlock, InvertedResidual


class MLP(nn.Module):
    def __init__(self, c=16, e=64):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, e, 1), nn.Conv2d(e, c, 1)

    def forward(self, x):
        return x + self.fc2(nn.functional.gelu(self.fc1(x)))


class BasicBlock(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.b(torch.relu(self.a(x))))


BLOCKS = {  # case -> (the kernel's kind, model, input, the name to force): one block of each kernel
    "inverted_residual": ("fused_inverted_residual", lambda: InvertedResidual(16, 64, 16, 3, 1, nn.ReLU6),
                          (1, 16, 13, 11), "conv_pw"),
    "inverted_residual-7px": ("fused_inverted_residual", lambda: InvertedResidual(16, 64, 16, 3, 1, nn.ReLU6),
                              (1, 16, 7, 7), "conv_pw"),  # tiles that coincide: points left out
    "pointwise_mlp": ("fused_pointwise_mlp", MLP, (1, 16, 9, 10), "fc1"),
    "convnext_block": ("fused_convnext_block", lambda: ConvNeXtBlock(16, 48, 5), (1, 16, 7, 9), "conv_dw"),
    "conv_pair": ("fused_conv_pair", BasicBlock, (1, 16, 10, 9), "a"),
}


def _fused_task(case, lanes):
    kind, build, shape, name = BLOCKS[case]
    torch.manual_seed(0)
    model, x = build().eval(), torch.randn(shape)
    target = resolve_target("cpu").with_lanes(lanes)
    graph = convopt.optimize(model, x, target=target, tuning_logs=False, fuse_blocks={name: True}, check=False).graph
    (task,) = [t for t in extract_tasks(graph, target) if t.kind == kind]
    return task, target


def _run(mod, target, inputs):
    compiled = tvm.compile(mod, target=target.tvm)["main"]
    device = target.device()
    args = [tvm.runtime.tensor(a, device) for a in inputs]
    compiled(*args)
    return args[-1].numpy()


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("case", list(BLOCKS))
def test_every_point_computes_what_the_default_does(case, lanes):
    task, target = _fused_task(case, lanes)
    points = list(task.points())
    assert len(points) == task.size() > 2 and not task.searched
    default = task.module(points[0])
    tvm.ir.assert_structural_equal(default["main"], task.workload["main"])  # the default point is what runs untuned
    scripts = {task.module(p)["main"].script() for p in points}
    assert len(scripts) == len(points)  # every point a different kernel
    space = task.generator  # and no kernel of the space left out: as many kernels as all combinations build
    combinations = itertools.product(*(fused_space.CANDIDATES[name] for name in space.knobs))
    built = {space.build(Tiles(**dict(zip(space.knobs, values)))).script() for values in combinations}
    assert len(built) == len(points)
    rng = np.random.default_rng(0)
    from tvm.s_tir import meta_schedule as ms

    inputs = [rng.standard_normal([int(d) for d in info.shape]).astype(np.float32) if info.dtype == "float32"
              else np.ones([int(d) for d in info.shape], info.dtype)  # the mixer's tap mask: every tap
              for info in ms.arg_info.ArgInfo.from_prim_func(task.workload["main"])]
    expected = _run(default, target, inputs)
    # one knob moved at a time, and the point farthest from the default (every knob at its last value)
    moved = [p for p in points[1:] if sum(1 for d in _decisions(p) if d) == 1] + [points[-1]]
    for point in moved:
        assert relative_error(torch.from_numpy(_run(task.module(point), target, inputs)),
                              torch.from_numpy(expected)) <= 1e-5, str(point.trace)


def _decisions(sch):
    return [int(sch.trace.decisions[inst]) for inst in sch.trace.insts if inst.kind.name == "SampleCategorical"]


def test_points_that_build_the_same_kernel_count_once():
    task, _ = _fused_task("inverted_residual-7px", 8)  # 7 columns: 8 and 12 at most are both the whole row
    combinations = 3 * 2 * 3
    keys = [task.generator.kernel_key(p.trace) for p in task.points()]
    assert len(keys) == len(set(keys)) == task.size() < combinations


def test_a_trace_of_another_space_or_version_is_refused():
    task, _ = _fused_task("inverted_residual", 16)
    sch = tvm.s_tir.Schedule(task.workload)
    sch.sample_categorical([8, 4], [0.5, 0.5], decision=1)  # one knob, other candidates
    with pytest.raises(ValueError, match="knobs"):
        task.generator.realize(sch)
    for version, columns in ((fused_space.SPACE_VERSION + 1, [8, 4, 12]), (fused_space.SPACE_VERSION, [4, 8, 12])):
        sch = tvm.s_tir.Schedule(task.workload)  # the right number of samples: another version, other candidates
        sch.sample_categorical([version], [1.0], decision=0)
        for candidates in (columns, [2, 1], [1, 2, 4]):
            sch.sample_categorical(candidates, [1 / len(candidates)] * len(candidates), decision=0)
        with pytest.raises(ValueError, match="version|candidates"):
            task.generator.realize(sch)
    sch = task.default()  # today's
    tvm.ir.assert_structural_equal(task.generator.realize(sch).with_attr("global_symbol", "main"), task.workload["main"])


def test_the_rules_are_the_default_point():
    # the register tile rule: half the registers as accumulators, up to 8 columns; 12 may take three quarters;
    # a divisor of the row down to half the most (tiling.pick_tile), not a guarded last tile
    assert fused_space.column_tile(56, 16, 2) == 8 and fused_space.column_tile(48, 16, 2, most=12) == 12
    assert fused_space.column_tile(56, 16, 2, most=12) == 8 and fused_space.column_tile(58, 16, 2, most=12) == 12
    assert fused_space.column_tile(56, 8, 2) == 4 and fused_space.column_tile(60, 8, 2, most=12) == 6
    assert fused_space.channel_vectors(4) == 2 and fused_space.channel_vectors(4, most=1) == 1
    assert fused_space.bands_of(2, 7, Tiles(band_factor=4)) == 7 and fused_space.bands_of(2, 56, DEFAULT) == 2
