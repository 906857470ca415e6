"""The opaque ATen ops with a TVM lowering: each in a small conv net on the CPU target, against eager; the
ones it doesn't cover are refused naming the node, or fall back whole with the default target."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convopt
from convopt.backends.relax_emit import unsupported_nodes
from convopt.capture import capture_program
from convopt.ir.ops import Op
from tests.conftest import Fn, rel_err


class Between(nn.Module):
    """conv -> the op under test -> conv, so the op sits between kernels (and layouts) like in a real CNN."""

    def __init__(self, fn, out_channels=8):
        super().__init__()
        self.a, self.fn, self.b = nn.Conv2d(3, 8, 3, padding=1), fn, nn.Conv2d(out_channels, 4, 3, padding=1)

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


def _shuffle(x, groups=2):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def _max_and_where(x):
    """adaptive max pool's values and flat indices (of the first of equal maxima: ties in a 0/2 map)."""
    values, indices = F.adaptive_max_pool2d(x, (3, 2), return_indices=True)
    return values + indices.float() * 0.01


class Eca(nn.Module):
    """timm's efficient channel attention: a conv1d across the pooled channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv(x.mean(dim=(2, 3)).unsqueeze(1)).squeeze(1)
        return x * torch.sigmoid(y)[..., None, None]


class PositionConv3d(nn.Module):
    """timm's LambdaLayer position embedding: a conv3d over (1, H, W) of the values; and a grouped, dilated one."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, (1, 3, 5), padding=(0, 1, 2), bias=True)
        self.grouped = nn.Conv3d(2, 4, 3, padding=(1, 2, 2), dilation=(1, 2, 2), groups=2, bias=False)

    def forward(self, x):
        y = self.conv(x[:, :2].unsqueeze(1)).sum(dim=(1, 2)) + self.grouped(x[:, None, :2].transpose(1, 2)).mean(dim=(1, 2))
        return x * y.unsqueeze(1)


def _attention(causal: bool = False, mask: str = "", tokens: int = 10 * 11):
    """Self-attention over the pixels of the 10x11 map with 2 heads of 4 channels (MobileViT / FastViT style)."""
    generator = torch.Generator().manual_seed(0)
    attn_mask = None
    if mask == "bool":
        attn_mask = (torch.rand(tokens, tokens, generator=generator) > 0.3) | torch.eye(tokens, dtype=torch.bool)
    elif mask == "float":
        attn_mask = torch.randn(tokens, tokens, generator=generator)

    def fn(x):
        n, c, h, w = x.shape
        tokens = x.reshape(n, 2, c // 2, h * w).transpose(2, 3)  # [n, heads, h*w, c/heads]
        out = F.scaled_dot_product_attention(tokens, tokens * 0.5, tokens.flip(2), attn_mask=attn_mask,
                                             is_causal=causal, scale=0.3 if mask else None)
        return out.transpose(2, 3).reshape(n, c, h, w)

    return fn


CASES = {
    "nearest_x2": lambda x: F.interpolate(x, scale_factor=2, mode="nearest"),
    "nearest_to_size": lambda x: F.interpolate(x, size=(13, 7), mode="nearest"),
    "bilinear_half_pixel": lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
    "bilinear_align_corners": lambda x: F.interpolate(x, size=(15, 9), mode="bilinear", align_corners=True),
    "bilinear_down": lambda x: F.interpolate(x, size=(5, 4), mode="bilinear", align_corners=False),
    "pad_constant": lambda x: F.pad(x, (1, 2, 0, 3)),
    "pad_value": lambda x: F.pad(x, (1, 1, 1, 1), value=0.5),
    "pad_reflect": lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect"),
    "pad_negative_crops": lambda x: F.pad(x, (-1, 2, 1, -2)) + F.pad(x, (0, 1, -2, 1), value=0.5),
    "slice_h": lambda x: x[:, :, 1:7],
    "slice_w_step": lambda x: x[:, :, :, ::2],
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "channel_shuffle": _shuffle,
    "pixel_shuffle_round_trip": lambda x: F.pixel_shuffle(F.pixel_unshuffle(x[:, :, :, :10], 2) * 2.0, 2),
    "elu": lambda x: F.elu(x, 0.7),
    "selu": F.selu,
    "softplus": lambda x: F.softplus(x * 10.0, beta=2.0, threshold=15.0),
    "mish": lambda x: F.mish(x * 30.0),
    "mish_of_mish": lambda x: F.mish(F.mish(x * 5.0)) + F.mish(F.softplus(x, beta=0.5)),  # compiled for > 10 min once
    "prelu": nn.PReLU(8),
    "select_narrow": lambda x: x[:, 1:2] * x[:, :, -2].unsqueeze(2) + x.narrow(3, 1, 6).sum(dim=3, keepdim=True),
    "expand": lambda x: x.mean(dim=(2, 3), keepdim=True).expand(-1, -1, 10, 11) * x,
    "where_gt": lambda x: torch.where(x > 0.1, x, x * 0.1) + torch.where(x <= -0.2, x, x * 2),
    "expand_as_reshape_as": lambda x: x.mean(dim=(2, 3), keepdim=True).expand_as(x) * x.reshape_as(x),
    "matmul": lambda x: torch.matmul(x, x.transpose(2, 3)[..., :11]).relu(),
    "stack_unbind": lambda x: torch.stack([a * (i + 1) for i, a in enumerate(x.unbind(1))], dim=1),
    "clamp_min_square_pow": lambda x: x.clamp_min(0.1).square() + x.pow(3.0),
    "eca_conv1d": Eca(),
    "lambda_conv3d": PositionConv3d(),
    "sum_all": lambda x: x / x.abs().sum(),
    "normalize": lambda x: F.normalize(x, dim=1) + F.normalize(x, p=1.0, dim=3)
                          + x / torch.linalg.vector_norm(x, ord=float("inf"), dim=(2, 3), keepdim=True),
    "casts": lambda x: x.half().float() + x.to(torch.float64).abs().sqrt().to(torch.float32),
    "unary": lambda x: (x.abs().sqrt() + x.sin() * x.cos() - x.neg().exp().clamp_max(5.0)
                        + (x.abs() + 1).log() + torch.erf(x) + x.floor() + x.ceil() + x.round() + x.sign()
                        + (x.abs() + 1).reciprocal()),
    "attention": _attention(),
    "attention_causal": _attention(causal=True),
    "attention_bool_mask": _attention(mask="bool"),
    "attention_float_mask": _attention(mask="float"),
    "unfold": lambda x: x.unfold(2, 4, 3).unfold(3, 5, 2).mean(dim=(-1, -2)),  # HaloNet's windows
    "unfold_last_dim": lambda x: x.unfold(3, 3, 4).sum(dim=-1) * x[..., :3],
    "adaptive_max_pool": lambda x: (x * F.interpolate(F.adaptive_max_pool2d(x, (4, 1)), size=(10, 11))
                                    + F.adaptive_max_pool2d(x, (1, 3)).sum(dim=3, keepdim=True)
                                    + F.adaptive_max_pool2d(x, 1)),  # windows of unequal size (10 rows in 4)
    "adaptive_max_pool_indices": lambda x: x * F.interpolate(_max_and_where((x > 0.3).float() * 2.0), size=(10, 11)),
    "chunk_then_cat": lambda x: torch.cat([c * (i + 1) for i, c in enumerate(x.chunk(3, dim=1))], dim=1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_compiles_on_the_cpu_target_and_matches_eager(case):
    torch.manual_seed(0)
    model = Between(Fn(CASES[case])).eval()
    x = torch.randn(1, 3, 10, 11)
    fast = convopt.optimize(model, x, target="cpu", strict=True)  # checks against eager too; no fallback
    assert fast.target != "torch" and not fast.fallbacks
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) < 1e-5


def test_ops_outside_the_table_stay_unsupported_and_fall_back_to_torch_alone():
    model = Between(Fn(lambda x: torch.roll(x, 1, 2))).eval()
    x = torch.randn(1, 3, 8, 8)
    graph = capture_program(model, x, mode="inference").graph
    missing = unsupported_nodes(graph)
    assert [n.attrs.target for n in missing] == ["aten.roll.default"]
    with pytest.warns(UserWarning, match="roll"):
        fast = convopt.optimize(model, x)
    assert fast.target != "torch" and list(fast.fallbacks.values()) == ["aten.roll.default"]


@pytest.mark.parametrize("fn,reason", [(lambda x: F.pad(x, (-1, -1, 1, 1), mode="reflect"), "negative padding"),
                                       (lambda x: F.pad(x, (1, 0, 2, 1), mode="replicate"), "padding mode")])
def test_arguments_it_does_not_cover_fall_back_or_are_refused_naming_the_node(fn, reason):
    model = Between(Fn(fn)).eval()
    x = torch.randn(1, 3, 8, 8)
    torch_nodes = [n for n in capture_program(model, x, mode="inference").graph.nodes if n.op is Op.TORCH]
    assert torch_nodes
    with pytest.raises(NotImplementedError, match=f"node %.*{reason}.*strict=False"):
        convopt.optimize(model, x, target="cpu", strict=True)
    with pytest.warns(UserWarning, match="run in PyTorch"):
        fast = convopt.optimize(model, x, target="cpu")  # checks against eager
    assert [fast.fallbacks[n.name] for n in torch_nodes] == [n.attrs.target for n in torch_nodes]


def test_the_ops_block_layout_lets_through_are_emitted_by_tvm():
    """passes/block_layout.py keeps these blocked: a PyTorch fallback would be handed [N, C/b, H, W, b]."""
    from convopt.backends.aten_emit import ATEN_EMITTERS, TYPED_EMITTERS
    from convopt.ir.ops import ELEMENTWISE_ATEN, PAD_TARGETS

    assert ELEMENTWISE_ATEN <= set(ATEN_EMITTERS) and PAD_TARGETS <= set(TYPED_EMITTERS)
