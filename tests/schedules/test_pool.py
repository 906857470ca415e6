"""The max pool kernels, NCHW and channel-blocked, against PyTorch's max_pool2d (windows, strides, padding,
dilation, ceil mode, NaN and -inf at the border) for 8 and 16 lanes; their schedules are parallel, vectorized, and
test no bound in the max; the backend runs them, and Relax's pool for a dilated blocked window."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from torch import nn

import convopt
from convopt.backends.nan_semantics import PropagateNaN
from convopt.ir.layout import to_blocked
from convopt.schedules.kernel import from_layout
from convopt.schedules.pool import blocked_max_pool_prim_func, max_pool_prim_func

from ..conftest import rel_err
from .conv_cases import host

# (channels, height, width, kernel, stride, padding, dilation, ceil_mode)
CASES = [
    (5, 20, 18, (3, 3), (2, 2), (1, 1), (1, 1), False),  # a ResNet stem's pool, small
    (3, 11, 13, (3, 3), (2, 2), (0, 0), (1, 1), True),  # ceil mode: the last window hangs over
    (4, 9, 10, (2, 2), (2, 2), (0, 0), (1, 1), False),  # no padding at all
    (2, 12, 12, (3, 3), (1, 1), (1, 1), (1, 1), False),  # stride 1: a single phase
    (2, 15, 14, (5, 3), (1, 2), (2, 1), (2, 1), False),  # dilated rows, unequal strides
    (3, 10, 80, (3, 3), (2, 3), (1, 1), (1, 2), True),  # 27 columns out (> 16 lanes), stride 3, dilated columns
    (2, 8, 140, (2, 2), (1, 1), (0, 0), (1, 1), False),  # 139 columns: vectorized in no whole chunk
]


def _run(func, x: np.ndarray, out_shape, lanes: int) -> np.ndarray:
    mod = PropagateNaN(tvm.IRModule({"main": func}))  # as the backend builds it
    run = tvm.compile(mod, target=host(lanes).tvm)["main"]
    out = tvm.runtime.empty(out_shape, "float32", tvm.cpu())
    run(tvm.runtime.tensor(x), out)
    return out.numpy()


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:3])) + f"-k{c[3]}-s{c[4]}-p{c[5]}-d{c[6]}"
                         + ("-ceil" if c[7] else ""))
def test_the_kernel_equals_pytorchs_max_pool(lanes, case):
    channels, height, width, kernel, stride, padding, dilation, ceil_mode = case
    torch.manual_seed(0)
    x = torch.randn(2, channels, height, width)
    x[0, 0, 0, :] = float("-inf")  # a border row of -inf: padding must not beat it
    x[0, 0, :, 0] = float("-inf")
    x[1, 1, height // 2, width // 2] = float("nan")  # and a NaN inside: its windows are NaN
    expected = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    out_shape = tuple(expected.shape)  # PyTorch's size, ceil mode included (the IR node's type)
    func = max_pool_prim_func(tuple(x.shape), out_shape, kernel, stride, padding, dilation, host(lanes))
    np.testing.assert_array_equal(_run(func, x.numpy(), out_shape, lanes), expected.numpy())


@pytest.mark.parametrize("lanes", [8, 16])
def test_the_schedule_is_parallel_vectorized_and_the_max_tests_no_bound(lanes):
    func = max_pool_prim_func((1, 24, 64, 64), (1, 24, 32, 32), (3, 3), (2, 2), (1, 1), (1, 1), host(lanes))
    text = func.script()
    assert "T.parallel" in text and "T.vectorized" in text
    update = text[text.index('T.sblock("pool_max_update")'):]
    assert "if_then_else" not in update  # the border is in the padded rows: the taps load unconditionally
    # contiguous in ow (i3)
    assert "v_rw // 2 + v_i3" in update.replace(" ", "").replace("//", " // ").replace("+", " + ")


def test_a_whole_plane_per_task_when_it_fits_and_bands_when_not():
    from convopt.schedules.pool import _band_rows

    # 23 padded rows fit: 11 output rows, of which 8 divide 32
    assert _band_rows(32, 2, 3, 2 * 66 * 4, budget=12288, planes=24, cores=2) == 8
    assert _band_rows(8, 2, 3, 2 * 18 * 4, budget=12288, planes=24, cores=2) == 8  # the whole plane
    # 13 padded rows fit: 6 output rows; neither 6 nor 5 divides 56, 4 does
    assert _band_rows(56, 2, 3, 2 * 114 * 4, budget=12288, planes=64, cores=2) == 4
    assert _band_rows(16, 2, 3, 2 * 18 * 4, budget=12288, planes=1, cores=2) == 2  # 8 tasks: 4 per core
    assert _band_rows(5, 2, 3, 2 * 18 * 4, budget=12288, planes=1, cores=2) == 1  # as many as there are rows


class _Stem(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, channels, 3, 2, 1), nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.head(F.max_pool2d(torch.relu(self.conv(x)), 3, 2, 1))


def test_an_nchw_pool_runs_convopts_kernel():
    model = _Stem(6).eval()  # 6 channels: no channel blocks at any width
    x = torch.randn(1, 3, 40, 40)
    fast = convopt.optimize(model, x, strict=True)  # checked against eager
    pool = next(n for n in fast.graph.nodes if n.op.value == "max_pool2d")
    assert not pool.type.layout
    assert any(name.startswith("convopt_max_pool2d") for name in fast._compiled.kernels)
    with torch.no_grad():
        x2 = torch.randn_like(x)
        assert rel_err(fast(x2), model(x2)) <= 1e-5


def _blocked_input(channels, height, width) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(2, channels, height, width)
    x[0, 0, 0, :] = float("-inf")  # a border row and column of -inf: a clamped tap must not invent a value
    x[0, 0, :, 0] = float("-inf")
    x[1, 1, height // 2, width // 2] = float("nan")
    x[1, 0, 1, 1] = float("inf")  # inf is not NaN
    return x


BLOCKED_CASES = [case for case in CASES if case[6] == (1, 1)] + [
    (19, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1), False),  # channels not a whole number of blocks
    (16, 6, 6, (6, 6), (1, 1), (0, 0), (1, 1), False),  # one window over the whole map
    (8, 20, 70, (20, 70), (1, 1), (0, 0), (1, 1), False),  # a global max: its taps stay loops
    (16, 13, 13, (13, 13), (1, 1), (6, 6), (1, 1), False),  # SPP's 13x13, stride 1: rows loop, columns unrolled
]


@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("case", BLOCKED_CASES, ids=lambda c: "x".join(map(str, c[:3])) + f"-k{c[3]}-s{c[4]}-p{c[5]}"
                         + ("-ceil" if c[7] else ""))
def test_the_blocked_kernel_equals_pytorchs_max_pool(block, case):
    channels, height, width, kernel, stride, padding, dilation, ceil_mode = case
    x = _blocked_input(channels, height, width)
    expected = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    func = blocked_max_pool_prim_func(tuple(x.shape), tuple(expected.shape), block, kernel, stride, padding, dilation)
    stored = to_blocked(x.numpy(), block)
    out = _run(func, stored, (*expected.shape[:1], stored.shape[1], *expected.shape[2:], block), block)
    np.testing.assert_array_equal(from_layout(torch.from_numpy(out), block, channels).numpy(), expected.numpy())
    assert not out[:, -1, ..., channels % block or block:].any()  # the pad lanes stay zero


def test_a_dilated_blocked_window_is_not_the_blocked_kernels():
    assert blocked_max_pool_prim_func((1, 16, 12, 12), (1, 16, 4, 4), 16, (3, 3), (2, 2), (0, 0), (2, 2)) is None


def test_the_blocked_schedule_unrolls_its_taps_and_tests_no_bound():
    func = blocked_max_pool_prim_func((1, 64, 112, 112), (1, 64, 56, 56), 16, (3, 3), (2, 2), (1, 1), (1, 1))
    text = func.script()
    assert "T.parallel(224)" in text  # the rows of every channel block
    assert text.count("T.unroll(3)") == 2 and "T.vectorized(16)" in text
    assert "if_then_else" not in text and "T.max(T.min(v_i2 * 2 + v_rh - 1, 111), 0)" in text  # clamped (i2: oh)


@pytest.mark.parametrize("dilation, kernel_name", [(1, "convopt_max_pool2d"), (2, None)])
def test_a_channel_blocked_pool_runs_convopts_kernel_unless_dilated(dilation, kernel_name):
    class Stem(_Stem):
        def forward(self, x):
            return self.head(F.max_pool2d(torch.relu(self.conv(x)), 3, 2, 1, dilation))

    model = Stem(64).eval()
    x = torch.randn(1, 3, 64, 64)
    fast = convopt.optimize(model, x, strict=True, lowering="direct")  # direct convs exchange blocked tensors
    pool = next(n for n in fast.graph.nodes if n.op.value == "max_pool2d")
    assert pool.type.layout
    assert any(name.startswith("convopt_max_pool2d") for name in fast._compiled.kernels) == bool(kernel_name)


def test_a_pool_the_schedule_refuses_falls_back_to_tvms_pool(monkeypatch):
    from tvm.s_tir.schedule import ScheduleError

    import convopt.schedules.pool as pool

    def refuse(*args, **kwargs):
        raise ScheduleError("refused")

    monkeypatch.setattr(pool, "max_pool_prim_func", refuse)
    model = _Stem(6).eval()
    x = torch.randn(1, 3, 40, 40)
    fast = convopt.optimize(model, x, strict=True)  # checked against eager
    assert not any(name.startswith("convopt_max_pool2d") for name in fast._compiled.kernels)
