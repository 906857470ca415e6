"""Property-based: each CPU fused block kernel against PyTorch over shapes drawn by hypothesis (channels that
are and aren't whole vectors, expansion, kernel size, stride, odd maps, batch > 1), at a point of its design
space drawn too (schedules/fused_space.py), with its tensors NCHW or channel-blocked, for 8 and 16 lanes."""

import numpy as np
import torch
import torch.nn.functional as F
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convopt.ir.layout import to_blocked
from convopt.numerics import relative_error
from convopt.schedules import fused_block, fused_chain, fused_mlp
from convopt.schedules.fused_space import CANDIDATES, Tiles
from convopt.target import resolve_target

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TARGET = resolve_target("cpu")  # the host runs either width


def tiles(knobs=tuple(CANDIDATES)):
    return st.builds(Tiles, **{name: st.sampled_from(CANDIDATES[name]) for name in knobs})


def _run(func, inputs, out_shape):
    run = tvm.compile(tvm.IRModule({"main": func}), target=TARGET.tvm)["main"]
    out = tvm.runtime.empty(out_shape, "float32", TARGET.device())
    run(*map(tvm.runtime.tensor, inputs), out)
    return out.numpy()


def _check(got, expected, lanes, out_block):
    expected = to_blocked(expected, lanes) if out_block else expected
    assert relative_error(torch.from_numpy(got), torch.from_numpy(np.ascontiguousarray(expected))) <= 1e-4


def _stored(a, lanes, blocked):
    return to_blocked(a, lanes) if blocked else a


@SETTINGS
@given(c=st.sampled_from([8, 12, 16, 24]), ratio=st.sampled_from([1, 3, 6]), o=st.sampled_from([8, 16, 20]),
       k=st.sampled_from([3, 5, 7]), stride=st.sampled_from([1, 2]), h=st.integers(3, 15), w=st.integers(3, 15),
       batch=st.integers(1, 2), lanes=st.sampled_from([8, 16]), project=st.booleans(), point=tiles(),
       layouts=st.tuples(st.booleans(), st.booleans()))
def test_the_inverted_residual_kernel(c, ratio, o, k, stride, h, w, batch, lanes, project, point, layouts):
    block = fused_block.InvertedResidual.of(c, c * ratio, o if project else None, h, w, k, stride, "relu6", batch)
    in_block, out_block = (blocked and channels % lanes == 0 for blocked, channels in
                           zip(layouts, (c, block.out_channels)))
    rng = np.random.default_rng(0)
    E = c * ratio
    shapes = ((E, c, 1, 1), (E,), (E, 1, k, k), (E,)) + (((o, E, 1, 1), (o,)) if project else ())
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    func = fused_block.prim_func(block, lanes, 2, in_block=in_block, out_block=out_block, tiles=point)
    out_shape = fused_block.io_shapes(block, lanes, in_block, out_block)[1]
    got = _run(func, [_stored(x, lanes, in_block), *fused_block.prepare_weights(block, *arrays, lanes=lanes)],
               out_shape)
    t = [torch.from_numpy(a) for a in arrays]
    y = F.relu6(F.conv2d(torch.from_numpy(x), t[0], t[1]))
    y = F.relu6(F.conv2d(y, t[2], t[3], stride, k // 2, groups=E))
    if project:
        y = F.conv2d(y, t[4], t[5]) + (torch.from_numpy(x) if block.residual else 0)
    _check(got, y.numpy(), lanes, out_block)


@SETTINGS
@given(c=st.sampled_from([8, 12, 16, 40]), ratio=st.sampled_from([2, 4]), k=st.sampled_from([None, 3, 7]),
       h=st.integers(2, 12), w=st.integers(2, 12), batch=st.integers(1, 2), lanes=st.sampled_from([8, 16]),
       point=tiles(), layouts=st.tuples(st.booleans(), st.booleans(), st.booleans()), offset=st.sampled_from([0, 20]))
def test_the_pointwise_mlp_and_convnext_kernel(c, ratio, k, h, w, batch, lanes, point, layouts, offset):
    block = fused_mlp.PointwiseMLP.of(c, c * ratio, c, h, w, "gelu", True, batch, mixer_kernel=k)
    in_block, skip_block, out_block = (blocked and c % lanes == 0 for blocked in layouts)
    rng = np.random.default_rng(0)
    E = c * ratio
    shapes = ((E, c, 1, 1), (E,), (c, E, 1, 1), (c,))
    if k is not None:
        shapes = ((c, 1, k, k), (c,), (c,), (c,)) + shapes
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32) + offset  # far from zero mean: the norm
    skip = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    func = fused_mlp.prim_func(block, lanes, 2, in_block=in_block, out_block=out_block, skip_block=skip_block,
                               tiles=point)
    out_shape = fused_mlp.io_shapes(block, lanes, in_block, out_block)[1]
    got = _run(func, [_stored(x, lanes, in_block), *fused_mlp.prepare_weights(block, *arrays, lanes=lanes),
                      _stored(skip, lanes, skip_block)], out_shape)
    t = [torch.from_numpy(a) for a in arrays]
    y = torch.from_numpy(x)
    if k is not None:
        y = F.conv2d(y, t[0], t[1], padding=k // 2, groups=c)
        y = F.layer_norm(y.permute(0, 2, 3, 1), (c,), t[2], t[3], block.eps).permute(0, 3, 1, 2)
        t = t[4:]
    y = F.conv2d(F.gelu(F.conv2d(y, t[0], t[1])), t[2], t[3]) + torch.from_numpy(skip)
    _check(got, y.numpy(), lanes, out_block)


@SETTINGS
@given(c=st.sampled_from([3, 8, 16]), m=st.sampled_from([8, 16, 24]), o=st.sampled_from([8, 16, 32]),
       k=st.sampled_from([3, 5]), stride=st.sampled_from([1, 2]), bottleneck=st.booleans(), h=st.integers(4, 13),
       w=st.integers(4, 13), batch=st.integers(1, 2), lanes=st.sampled_from([8, 16]),
       point=tiles(fused_chain.KNOBS), layouts=st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_the_conv_chain_kernel(c, m, o, k, stride, bottleneck, h, w, batch, lanes, point, layouts):
    chain = fused_chain.ConvChain.of(c, m, o, h, w, k, stride, bottleneck=bottleneck, residual=True, batch=batch)
    in_block, skip_block, out_block = (blocked and channels % lanes == 0 for blocked, channels in
                                       zip(layouts, (c, o, o)))
    rng = np.random.default_rng(0)
    arrays = fused_chain.random_arrays(chain, rng)
    x = rng.standard_normal(fused_chain.io_shapes(chain, lanes)[0]).astype(np.float32)
    skip = rng.standard_normal(fused_chain.io_shapes(chain, lanes)[1]).astype(np.float32)
    func = fused_chain.prim_func(chain, lanes, 2, in_block=in_block, out_block=out_block, skip_block=skip_block,
                                 tiles=point)
    out_shape = fused_chain.io_shapes(chain, lanes, in_block, out_block)[1]
    got = _run(func, [_stored(x, lanes, in_block), *fused_chain.kernel_arguments(chain, arrays, lanes),
                      _stored(skip, lanes, skip_block)], out_shape)
    y = torch.from_numpy(x)
    for i, spec in enumerate(chain.convs):
        wt, b = (torch.from_numpy(a) for a in arrays[2 * i: 2 * i + 2])
        y = F.conv2d(y, wt, b, spec.stride, spec.padding)
        y = torch.relu(y) if i < len(chain.convs) - 1 else y
    _check(got, torch.relu(y + torch.from_numpy(skip)).numpy(), lanes, out_block)
