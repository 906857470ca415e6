"""The CUDA fused block kernel (inverted residual, pointwise MLP, ConvNeXt block, conv pair, bottleneck): its compute against eager PyTorch
(relative error, run on the CPU unscheduled) over a grid of block shapes; its default schedule built for
sm_80 and sm_90 and compiled by nvcc within the GPU's limits; its design space (default decisions, the
workload left untouched, other decisions built or rejected by MetaSchedule's GPU check, never a schedule
error); a forced block of a model compiled for CUDA as this kernel, and a tuning task there. No GPU runs
it here."""

import random
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm

from convopt.tuning.intrinsics import import_tensor_intrinsics
from convopt.schedules import fused_block_cuda as fbc
from convopt.schedules.fused_block import InvertedResidual as Block
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.fused_chain import ConvChain, random_arrays
from convopt.schedules.fused_mlp import PointwiseMLP
from convopt.numerics import relative_error
from convopt.target import resolve_target

ACTIVATIONS = {"relu": torch.relu, "relu6": lambda t: t.clamp(0, 6), "silu": F.silu, "hardswish": F.hardswish,
               "gelu": F.gelu}
GRID = [  # (C, E, O or None, H, W, k, stride, activation, batch)
    (16, 96, 24, 14, 14, 3, 2, "relu6", 1),
    (24, 144, 24, 12, 12, 3, 1, "relu6", 1),   # residual
    (12, 20, 10, 9, 11, 5, 1, "silu", 2),     # odd map, batch 2, channels below a warp
    (8, 48, 8, 9, 9, 7, 1, "hardswish", 1),    # 7x7, residual
    (16, 48, 16, 15, 15, 5, 2, "gelu", 1),
    (8, 32, None, 10, 10, 3, 1, "silu", 1),    # up to the squeeze-excite: no projection
    (12, 36, None, 11, 11, 5, 2, "relu", 2),
    (16, 64, 24, 14, 14, 3, 2, "relu6", 1, (0, 0, 1, 1)),  # TF "SAME" padding: a pad op, asymmetric
    (12, 36, None, 16, 16, 5, 2, "silu", 2, (1, 1, 2, 2)),
]
CUDA = [resolve_target({"kind": "cuda", "arch": arch}) for arch in ("sm_80", "sm_90")]


def _case(C, E, O, H, W, k, stride, act, batch, pre_pad=None, seed=0):
    block = Block.of(C, E, O, H, W, k, stride, act, batch=batch, pre_pad=pre_pad)
    rng = np.random.default_rng(seed)
    raw = [rng.standard_normal((E, C, 1, 1)), rng.standard_normal(E), rng.standard_normal((E, 1, k, k)),
           rng.standard_normal(E)]
    if O is not None:
        raw += [rng.standard_normal((O, E, 1, 1)), rng.standard_normal(O)]
    return block, [r.astype(np.float32) for r in raw], torch.randn(batch, C, H, W, generator=torch.manual_seed(seed))


def _eager(block, x, raw):
    act1, act2 = (ACTIVATIONS[a] for a in block.activations)
    d = block.depthwise
    w1, b1, w2, b2, *rest = map(torch.from_numpy, raw)
    t, l, b, r = block.pre_pad
    mid = F.pad(act1(F.conv2d(x, w1, b1)), (l, r, t, b))
    y = act2(F.conv2d(mid, w2, b2, d.stride, d.padding, groups=d.groups))
    if rest:
        y = F.conv2d(y, rest[0], rest[1])
        y = y + x if block.residual else y
    return y


def _scheduled(block, target=None) -> tvm.s_tir.Schedule:
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": fbc.prim_func(block)}))
    fbc.schedule_cuda(sch, "main", target)
    return sch


def _computed(block, x, weights, skip=None) -> torch.Tensor:
    """The block's unscheduled compute run on the CPU (LLVM) on x, the prepared weights and the skip of a
    block with one."""
    run = tvm.compile(tvm.IRModule({"main": fbc.prim_func(block)}), target="llvm")["main"]
    out = tvm.runtime.empty(fbc.io_shapes(block)[1], "float32", tvm.cpu())
    args = [x.numpy(), *weights] + ([skip.numpy()] if skip is not None else [])
    run(*map(tvm.runtime.tensor, args), out)
    return torch.from_numpy(out.numpy())


@pytest.mark.parametrize("case", GRID, ids=lambda c: "x".join(map(str, c)))
def test_the_compute_matches_eager(case):
    block, raw, x = _case(*case)
    assert relative_error(_computed(block, x, fbc.prepare_weights(block, *raw)), _eager(block, x, raw)) <= 1e-5


@pytest.mark.parametrize("case", [(24, 144, 24, 12, 12, 3, 1, "relu6", 1), (16, 96, 24, 14, 14, 3, 2, "relu", 1)],
                         ids=lambda c: "x".join(map(str, c)))
def test_the_activation_after_a_block_is_applied_and_scheduled(case):
    """MobileOne-style blocks end in an activation after the projection (and the add): the kernel applies it."""
    from dataclasses import replace

    plain, raw, x = _case(*case)
    block = replace(plain, out_activation="relu")
    expected = torch.relu(_eager(block, x, raw))
    assert relative_error(_computed(block, x, fbc.prepare_weights(block, *raw)), expected) <= 1e-5
    source = lambda b: tvm.compile(_scheduled(b, CUDA[0]).mod, target=CUDA[0].tvm).mod.imports[0].inspect_source()  # noqa: E731
    assert source(block).count("max(") == source(plain).count("max(") + 1  # one more max, in the output stage


@pytest.mark.parametrize("C, E, O, H, W, act, residual, batch", [
    (16, 64, 16, 14, 14, "gelu", True, 1), (24, 72, 40, 9, 7, "relu", False, 2)])
def test_the_pointwise_mlp_compute_matches_eager(C, E, O, H, W, act, residual, batch):
    block = PointwiseMLP.of(C, E, O, H, W, act, residual, batch)
    rng = np.random.default_rng(0)
    w1, b1, w3, b3 = (rng.standard_normal(shape).astype(np.float32) for shape in ((E, C, 1, 1), E, (O, E, 1, 1), O))
    x, skip = torch.randn(batch, C, H, W), torch.randn(batch, O, H, W)
    expected = F.conv2d(ACTIVATIONS[act](F.conv2d(x, torch.from_numpy(w1), torch.from_numpy(b1))),
                        torch.from_numpy(w3), torch.from_numpy(b3)) + (skip if residual else 0)
    got = _computed(block, x, fbc.prepare_weights(block, w1, b1, w3, b3), skip if residual else None)
    assert relative_error(got, expected) <= 1e-5
    source = tvm.compile(_scheduled(block, CUDA[0]).mod, target=CUDA[0].tvm).mod.imports[0].inspect_source()
    th, tw, ec, *_ = fbc.default_tiles(H, W, E, O)
    assert re.findall(r"__shared__ alignas\(\d+\) float \w+\[(\d+)\]", source) == [str(ec * th * tw)]


@pytest.mark.parametrize("case", [GRID[0], GRID[3], GRID[5], (160, 960, 320, 7, 7, 3, 1, "relu6", 1),
                                  (24, 144, 24, 56, 56, 3, 1, "relu6", 1),
                                  (16, 96, 24, 112, 112, 3, 2, "relu6", 1)], ids=lambda c: "x".join(map(str, c)))
def test_the_default_schedule_builds_for_sm80_and_sm90_within_the_limits(case):
    block, _, _ = _case(*case)
    for target in CUDA:
        source = tvm.compile(_scheduled(block, target).mod, target=target.tvm).mod.imports[0].inspect_source()
        shared = sum(int(n) for n in re.findall(r"__shared__ alignas\(\d+\) float \w+\[(\d+)\]", source))
        threads = [int(n) for n in re.findall(r"__launch_bounds__\((\d+)\)", source)]
        th, tw, ec, *_ = fbc.default_tiles(block.depthwise.out_height, block.depthwise.out_width,
                                               block.expand.out_channels, block.out_channels)
        halo = ((th - 1) * block.depthwise.stride[0] + block.depthwise.kernel[0]) * (
            (tw - 1) * block.depthwise.stride[0] + block.depthwise.kernel[0])
        needed = ec * halo + (ec * th * tw if block.project is not None else 0)  # the module docstring
        # (TVM sizes the halo buffer from its guarded cooperative loop: a channel or two more)
        assert needed <= shared <= needed + 2 * halo and 4 * shared <= 48 * 1024
        assert threads and max(threads) <= 1024
        if shutil.which("nvcc"):  # TVM only generates the source: nvcc must accept it
            from tvm.support import nvcc

            with target.tvm:
                assert nvcc.compile_cuda(source, target_format="cubin", arch=target.tvm.attrs["arch"],
                                         compiler="nvcc")


def test_each_thread_computes_its_share_of_the_chunks_depthwise_activations():
    """The depthwise stage (EC x TH x TW a chunk) is spread over the thread block's threads: each thread's
    serial loops over it cover EC / OT of its elements (before, every thread computed the whole chunk)."""
    block, _, _ = _case(24, 144, 24, 28, 28, 3, 1, "relu6", 1)
    sch = _scheduled(block, CUDA[0])
    th, tw, ec, groups, _ = fbc.default_tiles(28, 28, 144, 24)
    loops = [sch.get(loop) for loop in sch.get_loops(sch.get_sblock(fbc.DEPTHWISE_ACT))]
    serial = [int(loop.extent) for loop in loops if loop.thread_binding is None]
    assert [loop.thread_binding.thread_tag for loop in loops if loop.thread_binding is not None] == [
        "blockIdx.x", "threadIdx.x", "threadIdx.x"]  # the projection's threads, then the stage's own
    assert serial[0] == 144 // ec and int(np.prod(serial[1:])) == ec // groups  # the chunks, then its share


def _space(block, target):
    """(the workload, its tuning context with the kernel's space, the space's default schedule)."""
    from tvm.s_tir import meta_schedule as ms

    workload = tvm.IRModule({"main": fbc.prim_func(block)})
    import_tensor_intrinsics()  # TuneContext imports them: seconds, not minutes
    context = ms.TuneContext(mod=workload, target=target.tvm, space_generator=ms.space_generator.ScheduleFn(
        lambda sch: fbc.schedule_cuda(sch, "main", target), sch_rules=[], postprocs="cuda", mutator_probs="cuda"))
    (space,) = context.generate_design_space()
    return workload, context, space


def _random_points_build(workload, context, space, target, points: int, seed: int = 0) -> int:
    """How many of ``points`` random points of the space pass MetaSchedule's GPU checks (the others exceed the
    GPU's limits and are rejected by its postprocessors); the first that passes is compiled to CUDA code (nvcc
    takes 8-15 s a build, so the others are not). A schedule error would be a bug of the space and raises."""
    def random_split(total, parts, rng):
        factors = []
        for _ in range(parts - 1):
            factors.append(rng.choice([d for d in range(1, total + 1) if total % d == 0]))
            total //= factors[-1]
        return rng.sample(factors + [total], parts)

    tiles = [i for i in space.trace.insts if i.kind.name == "SamplePerfectTile"]
    rng, built = random.Random(seed), 0
    for _ in range(points):
        trace = space.trace
        for inst in tiles:
            decision = [int(v) for v in space.trace.decisions[inst]]
            trace = trace.with_decision(inst, random_split(int(np.prod(decision)), len(decision), rng),
                                        remove_postproc=True)
        sch = tvm.s_tir.Schedule(workload)
        trace.apply_to_schedule(sch, remove_postproc=True)
        if all(postproc.apply(sch) for postproc in context.space_generator.postprocs):
            if not built:
                assert "__global__" in tvm.compile(sch.mod, target=target.tvm).mod.imports[0].inspect_source()
            built += 1
    return built


def test_the_design_space_defaults_to_the_rules_and_leaves_the_workload_alone():
    target = CUDA[0]
    block, _, _ = _case(24, 144, 24, 28, 28, 3, 1, "silu", 1)
    workload, context, space = _space(block, target)
    tvm.ir.assert_structural_equal(workload["main"], fbc.prim_func(block))  # scheduling copied, didn't write back
    tiles = [i for i in space.trace.insts if i.kind.name == "SamplePerfectTile"]
    th, tw, ec, groups, blocks = fbc.default_tiles(28, 28, 144, 24)
    assert [tuple(int(v) for v in space.trace.decisions[i]) for i in tiles] == [
        (28 // th, th), (28 // tw, tw), (blocks, groups, 24 // (blocks * groups)), (144 // ec, ec)]
    assert fbc.default_tiles(7, 7, 3072, 768) == (7, 7, 16, 4, 6)  # 32 accumulators per thread, 6 thread blocks
    assert _random_points_build(workload, context, space, target, 6) >= 3


PAIRS = [ConvChain.of(16, 16, 16, 14, 14), ConvChain.of(8, 24, 32, 13, 11, stride=2, residual=True, batch=2),
         ConvChain.of(3, 16, 16, 12, 12, k=5, residual=False, activation="silu"),
         ConvChain((), (ConvSpec(1, 16, 10, 9, 24, (1, 1)), ConvSpec(1, 24, 10, 9, 32, (3, 3), (2, 2), (1, 1))),
                   ("relu",), False, "none")]  # 1x1 then a strided 3x3, no closing activation


def _chain_computed_and_eager(chain) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv pair's or bottleneck's compute run on the CPU, and the same chain in PyTorch (each conv, the
    activations between them, + the skip, the last activation), on the same random arrays and inputs."""
    arrays = random_arrays(chain, np.random.default_rng(0))
    x_shape, out_shape = fbc.io_shapes(chain)
    x, skip = torch.randn(*x_shape), torch.randn(*out_shape)
    got = _computed(chain, x, fbc.prepare_weights(chain, *arrays), skip if chain.residual else None)
    y = x
    for i, spec in enumerate(chain.convs):
        y = F.conv2d(y, *(torch.from_numpy(np.asarray(a)) for a in arrays[2 * i:2 * i + 2]), spec.stride,
                     spec.padding)
        y = ACTIVATIONS[chain.activations[i]](y) if i < len(chain.activations) else y
    y = y + skip if chain.residual else y
    return got, ACTIVATIONS.get(chain.out_activation, lambda t: t)(y)


@pytest.mark.parametrize("chain", PAIRS, ids=["basic", "strided-batch2", "stem-5x5", "1x1-then-strided"])
def test_the_conv_pair_compute_matches_eager_and_builds(chain):
    assert relative_error(*_chain_computed_and_eager(chain)) <= 1e-5
    for target in CUDA if chain is PAIRS[0] else CUDA[:1]:  # the default schedule: A's activations on the tile
        # and its halo in shared memory (nvcc takes ~8 s a build: both archs for one pair, sm_80 for the rest)
        source = tvm.compile(_scheduled(chain, target).mod, target=target.tvm).mod.imports[0].inspect_source()
        (shared,) = [int(n) for n in re.findall(r"__shared__ alignas\(\d+\) float \w+\[(\d+)\]", source)]
        b = chain.convs[1]
        th, tw, ec, *_ = fbc.default_tiles(b.out_height, b.out_width, b.in_channels, b.out_channels)
        halo = ((th - 1) * b.stride[0] + b.kernel[0]) * ((tw - 1) * b.stride[0] + b.kernel[0])
        assert ec * halo <= shared <= ec * halo + 2 * halo and 4 * shared <= 48 * 1024
        if shutil.which("nvcc"):
            from tvm.support import nvcc

            with target.tvm:
                assert nvcc.compile_cuda(source, target_format="cubin", arch=target.tvm.attrs["arch"],
                                         compiler="nvcc")


BOTTLENECKS = [ConvChain.of(16, 8, 16, 12, 12, bottleneck=True),  # + x
               ConvChain.of(12, 8, 20, 13, 11, stride=2, bottleneck=True, residual=True, batch=2),  # a skip
               ConvChain.of(8, 12, 16, 9, 9, k=5, bottleneck=True, residual=False, activation="silu")]


@pytest.mark.parametrize("chain", BOTTLENECKS, ids=["residual", "strided-skip-batch2", "5x5-silu"])
def test_the_bottleneck_compute_matches_eager(chain):
    assert relative_error(*_chain_computed_and_eager(chain)) <= 1e-5


RESNET50_BOTTLENECKS = [  # (the block, the default tile: the largest whose buffers fit 48 KB)
    (ConvChain.of(256, 64, 256, 56, 56, bottleneck=True), (8, 8)),
    (ConvChain.of(256, 128, 512, 56, 56, stride=2, bottleneck=True), (4, 4)),
    (ConvChain.of(512, 128, 512, 28, 28, bottleneck=True), (7, 7)),
    (ConvChain.of(512, 256, 1024, 28, 28, stride=2, bottleneck=True), (7, 1)),
    (ConvChain.of(1024, 256, 1024, 14, 14, bottleneck=True), (7, 2)),
    (ConvChain.of(1024, 512, 2048, 14, 14, stride=2, bottleneck=True), (1, 1)),
    (ConvChain.of(2048, 512, 2048, 7, 7, bottleneck=True), (1, 1))]


@pytest.mark.parametrize("chain, tile", RESNET50_BOTTLENECKS,
                         ids=lambda c: f"{c.convs[1].in_channels}@{c.convs[1].height}s{c.convs[1].stride[0]}"
                         if isinstance(c, ConvChain) else "")
def test_the_bottlenecks_default_schedule_keeps_the_first_conv_whole_per_tile_within_48_kb(chain, tile):
    """A's activations for the tile and its halo, every channel, and one chunk of B's: two shared buffers of
    exactly those sizes, together within 48 KB; nvcc accepts the source."""
    a, b, p = chain.convs
    th, tw, ec, *_ = fbc.default_tiles(b.out_height, b.out_width, b.out_channels, p.out_channels,
                                       (a.out_channels, b.kernel[0], b.stride[0]))
    assert (th, tw) == tile

    def halo(th_, tw_):
        return ((th_ - 1) * b.stride[0] + b.kernel[0]) * ((tw_ - 1) * b.stride[0] + b.kernel[0])

    target = CUDA[0]
    source = tvm.compile(_scheduled(chain, target).mod, target=target.tvm).mod.imports[0].inspect_source()
    shared = [int(n) for n in re.findall(r"__shared__ alignas\(\d+\) float \w+\[(\d+)\]", source)]
    assert sorted(shared) == sorted([a.out_channels * halo(th, tw), ec * th * tw]) and 4 * sum(shared) <= 48 * 1024
    assert max(int(n) for n in re.findall(r"__launch_bounds__\((\d+)\)", source)) <= 1024
    if shutil.which("nvcc") and chain is RESNET50_BOTTLENECKS[0][0]:  # ~8 s a build: one shape, both archs
        from tvm.support import nvcc

        for target in CUDA:
            source = tvm.compile(_scheduled(chain, target).mod, target=target.tvm).mod.imports[0].inspect_source()
            with target.tvm:
                assert nvcc.compile_cuda(source, target_format="cubin", arch=target.tvm.attrs["arch"],
                                         compiler="nvcc")


def test_a_bottleneck_too_wide_for_shared_memory_is_refused():
    wide = ConvChain.of(64, 1024, 64, 7, 7, k=7, bottleneck=True)  # 1024 channels x 7 x 7 x 4 bytes = 196 KB
    assert "shared memory" in fbc.supports(wide)
    assert fbc.supports(RESNET50_BOTTLENECKS[-1][0]) is None and fbc.supports(BOTTLENECKS[0]) is None
    with pytest.raises(ValueError, match="shared memory"):
        fbc.default_tiles(7, 7, 1024, 64, (1024, 7, 1))


def test_the_bottlenecks_design_space_builds():
    target = CUDA[0]
    workload, context, space = _space(ConvChain.of(32, 16, 32, 14, 14, bottleneck=True), target)
    assert sum(i.kind.name == "SamplePerfectTile" for i in space.trace.insts) == 4
    tvm.ir.assert_structural_equal(workload["main"], fbc.prim_func(ConvChain.of(32, 16, 32, 14, 14, bottleneck=True)))
    assert _random_points_build(workload, context, space, target, 8) >= 4


def test_the_conv_pairs_design_space_builds():
    target = CUDA[0]
    workload, context, space = _space(ConvChain.of(32, 32, 32, 28, 28), target)
    assert sum(i.kind.name == "SamplePerfectTile" for i in space.trace.insts) == 4
    assert _random_points_build(workload, context, space, target, 8) >= 4


def test_the_pointwise_mlps_design_space_builds():
    target = CUDA[0]
    workload, context, space = _space(PointwiseMLP.of(40, 160, 40, 14, 14, "gelu", True), target)
    assert sum(i.kind.name == "SamplePerfectTile" for i in space.trace.insts) == 4
    assert _random_points_build(workload, context, space, target, 8) >= 4


def test_a_forced_block_of_a_model_compiles_for_cuda_as_the_fused_kernel_and_is_a_tuning_task():
    from torch import nn

    from convopt.backends.tvm_backend import compile_graph
    from convopt.capture import capture_program
    from convopt.ir import Op
    from convopt.pipeline import build, run_passes
    from convopt.tuning.tasks import extract_tasks
    from tests.conftest import cuda_sources

    from ..passes.test_fuse_blocks import InvertedResidual

    model = nn.Sequential(InvertedResidual(16, 64, 16, 3, 1, nn.ReLU6),
                          InvertedResidual(16, 64, 24, 5, 2, nn.SiLU)).eval()
    captured = capture_program(model, (torch.randn(1, 16, 14, 14),), mode="inference").graph
    target = CUDA[0]
    unforced, _ = run_passes(captured, build("inference", target))
    assert not any(n.op is Op.FUSED_BLOCK for n in unforced.nodes)  # no GPU measured it: fused on request only
    graph, _ = run_passes(captured, build("inference", target, fuse_blocks={"1": True}))
    assert [n.scope for n in graph.nodes if n.op is Op.FUSED_BLOCK] == ["1"]
    executable, kernels, _ = compile_graph(graph, target)
    fused = {name: k for name, k in kernels.items() if k["lowering"].startswith("fused")}
    assert [k["lowering"] for k in fused.values()] == ["fused_inverted_residual"]
    assert any("fb_expand_act_shared" in s for s in cuda_sources(executable))
    tasks = extract_tasks(graph, target)
    (task,) = [t for t in tasks if t.kind == "fused_inverted_residual"]
    assert task.searched and task.weight == 1 and any(t.kind == "generated" for t in tasks)
    from tvm.s_tir import meta_schedule as ms

    import_tensor_intrinsics()  # TuneContext imports them: seconds, not minutes
    context = ms.TuneContext(task.workload, target=target.tvm, space_generator=task.space(target))
    (space,) = context.generate_design_space()  # the kernel's own space (its samples), not TVM's rules
    assert sum(i.kind.name == "SamplePerfectTile" for i in space.trace.insts) == 4
    tvm.ir.assert_structural_equal(space.mod["main"], task.default().mod["main"])


def test_a_forced_bottleneck_compiles_for_cuda_as_the_fused_kernel_and_one_too_wide_warns():
    from torch import nn

    from convopt.backends.tvm_backend import compile_graph
    from convopt.capture import capture_program
    from convopt.ir import Op
    from convopt.pipeline import build, run_passes
    from convopt.tuning.tasks import extract_tasks
    from tests.conftest import cuda_sources

    from ..passes.test_fuse_blocks import Bottleneck

    model = nn.Sequential(Bottleneck(32, 8, 32), Bottleneck(32, 16, 64, stride=2)).eval()
    captured = capture_program(model, (torch.randn(1, 32, 14, 14),), mode="inference").graph
    target = CUDA[0]
    graph, _ = run_passes(captured, build("inference", target, fuse_blocks={"0": True, "1": True}))
    assert [(n.scope, n.attrs.kind) for n in graph.nodes if n.op is Op.FUSED_BLOCK] == [
        ("0", "bottleneck"), ("1", "bottleneck")]  # the second's skip: its downsampled input, a kernel argument
    executable, kernels, _ = compile_graph(graph, target)
    assert sorted(k["lowering"] for k in kernels.values() if k["lowering"].startswith("fused")) == [
        "fused_bottleneck"] * 2
    assert any("fb_expand_act_shared" in s and "fb_depthwise_act_shared" in s for s in cuda_sources(executable))
    assert [t.kind for t in extract_tasks(graph, target)].count("fused_bottleneck") == 2

    wide = nn.Sequential(Bottleneck(32, 1024, 32)).eval()  # A's 1024 channels on a 3x3 halo: 36 KB, fits;
    wide.add_module("1", Bottleneck(32, 2048, 32))  # 2048: 72 KB for one pixel, refused
    captured = capture_program(wide, (torch.randn(1, 32, 7, 7),), mode="inference").graph
    with pytest.warns(UserWarning, match=r"block 1 \(bottleneck\) is not fused: .*shared memory"):
        graph, _ = run_passes(captured, build("inference", target, fuse_blocks={"0": True, "1": True}))
    assert [n.scope for n in graph.nodes if n.op is Op.FUSED_BLOCK] == ["0"]


CONVNEXTS = [PointwiseMLP.of(16, 64, 16, 14, 14, "gelu", True, mixer_kernel=7),
             PointwiseMLP.of(24, 96, 24, 9, 13, "gelu", True, batch=2, mixer_kernel=5),  # odd map, batch 2
             PointwiseMLP.of(12, 40, 20, 5, 4, "relu", False, mixer_kernel=7),  # a map smaller than the kernel
             PointwiseMLP.of(40, 160, 40, 14, 14, "gelu", True, mixer_kernel=11, norm=False)]  # InceptionNeXt's


def _convnext_case(block, seed=0):
    """(the arrays prepare_weights takes: wd, bd, the norm's scale and shift, w1, b1, w3, b3; x; skip), the
    block's input far from zero mean (the norm must subtract its mean exactly)."""
    rng = np.random.default_rng(seed)
    C, E, O, k = block.expand.in_channels, block.expand.out_channels, block.out_channels, block.mixer.kernel[0]
    shapes = [(C, 1, k, k), C, C, C, (E, C, 1, 1), E, (O, E, 1, 1), O]
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    arrays[2] = (arrays[2] * 0.5 + 1).astype(np.float32)  # the norm's scale
    x_shape, out_shape = fbc.io_shapes(block)
    return arrays, torch.randn(*x_shape, generator=torch.manual_seed(seed)) + 30, torch.randn(*out_shape)


def _convnext_eager(block, arrays, x, skip):
    wd, bd, scale, shift, w1, b1, w3, b3 = map(torch.from_numpy, arrays)
    d = F.conv2d(x, wd, bd, padding=block.mixer.padding, groups=block.mixer.groups)
    if block.norm:
        u = F.layer_norm(d.permute(0, 2, 3, 1), (d.shape[1],), scale, shift, block.eps).permute(0, 3, 1, 2)
    else:  # InceptionNeXt: the BatchNorm's affine, folded into the expand
        u = d * scale[:, None, None] + shift[:, None, None]
    y = F.conv2d(ACTIVATIONS[block.activation](F.conv2d(u, w1, b1)), w3, b3)
    return y + skip if block.residual else y


@pytest.mark.parametrize("block", CONVNEXTS, ids=["7x7", "5x5-odd-batch2", "small-map-no-skip", "inception-11"])
def test_the_convnext_block_compute_matches_eager_and_builds(block):
    arrays, x, skip = _convnext_case(block)
    got = _computed(block, x, fbc.prepare_weights(block, *arrays), skip if block.residual else None)
    assert relative_error(got, _convnext_eager(block, arrays, x, skip)) <= 1e-4
    # the default schedule: d (every channel of the tile), its mean and variance, and one chunk of the
    # expanded activations in shared memory, within 48 KB; nvcc accepts it (one shape, both archs)
    e_ = block.expand
    th, tw, ec, *_ = fbc.default_tiles(e_.height, e_.width, e_.out_channels, block.out_channels,
                                       (e_.in_channels + 2, 1, 1))
    for target in CUDA if block is CONVNEXTS[0] else CUDA[:1]:
        source = tvm.compile(_scheduled(block, target).mod, target=target.tvm).mod.imports[0].inspect_source()
        shared = [int(n) for n in re.findall(r"__shared__ alignas\(\d+\) float \w+\[(\d+)\]", source)]
        stats = [th * tw, th * tw] if block.norm else []  # the mean and the variance
        assert sorted(shared) == sorted([e_.in_channels * th * tw, *stats, ec * th * tw])
        assert 4 * sum(shared) <= 48 * 1024
        if shutil.which("nvcc") and block is CONVNEXTS[0]:
            from tvm.support import nvcc

            with target.tvm:
                assert nvcc.compile_cuda(source, target_format="cubin", arch=target.tvm.attrs["arch"],
                                         compiler="nvcc")


def test_a_wide_convnext_block_takes_a_tile_that_fits_and_its_space_builds():
    wide = PointwiseMLP.of(320, 1280, 320, 7, 7, "gelu", True, mixer_kernel=7)  # convnext_atto's last stage
    assert fbc.default_tiles(7, 7, 1280, 320, (322, 1, 1))[:2] == (7, 1)  # 7 x 7 x 338 floats: 66 KB
    assert fbc.supports(wide) is None
    assert "shared memory" in fbc.supports(PointwiseMLP.of(16384, 64, 16384, 7, 7, mixer_kernel=3))
    target = CUDA[0]
    workload, context, space = _space(CONVNEXTS[0], target)
    tvm.ir.assert_structural_equal(workload["main"], fbc.prim_func(CONVNEXTS[0]))
    assert sum(i.kind.name == "SamplePerfectTile" for i in space.trace.insts) == 4
    assert _random_points_build(workload, context, space, target, 8) >= 4


def test_a_forced_convnext_block_compiles_for_cuda_as_the_fused_kernel():
    from torch import nn

    from convopt.backends.tvm_backend import compile_graph
    from convopt.capture import capture_program
    from convopt.ir import Op
    from convopt.pipeline import build, run_passes
    from convopt.tuning.tasks import extract_tasks

    from ..passes.test_fuse_blocks import ConvNeXtBlock

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), ConvNeXtBlock(16, 64, 7)).eval()
    captured = capture_program(model, (torch.randn(1, 3, 14, 14),), mode="inference").graph
    target = CUDA[0]
    graph, _ = run_passes(captured, build("inference", target, fuse_blocks={"1": True}))
    assert [n.attrs.kind for n in graph.nodes if n.op is Op.FUSED_BLOCK] == ["convnext_block"]
    _, kernels, _ = compile_graph(graph, target)
    assert [k["lowering"] for k in kernels.values() if k["lowering"].startswith("fused")] == ["fused_convnext_block"]
    (task,) = [t for t in extract_tasks(graph, target) if t.kind == "fused_convnext_block"]
    assert task.searched


def test_a_fused_block_the_cuda_kernel_refuses_compiles_there_as_its_body():
    """A bottleneck too wide for the CUDA kernel's shared memory (schedules/fused_block_cuda.py ``supports``),
    in a graph fused for a CPU, compiles for CUDA op by op, from its body."""
    from convopt.backends.tvm_backend import compile_graph
    from convopt.capture import capture_program
    from convopt.passes.fuse_blocks import fuse_blocks
    from convopt.ir import Op
    from convopt.pipeline import build, run_passes

    from torch import nn

    from ..passes.test_fuse_blocks import Bottleneck

    model = nn.Sequential(Bottleneck(16, 2048, 16)).eval()  # 2048 channels x 3 x 3 x 4 bytes > 48 KB
    captured = capture_program(model, (torch.randn(1, 16, 5, 5),), mode="inference").graph
    target = CUDA[0]
    graph, _ = run_passes(captured, build("inference", target))
    fused = fuse_blocks(graph, overrides={"0": True})
    assert [n.attrs.kind for n in fused.nodes if n.op is Op.FUSED_BLOCK] == ["bottleneck"]
    _, kernels, _ = compile_graph(fused, target)
    assert not any(k["lowering"].startswith("fused_") for k in kernels.values())
