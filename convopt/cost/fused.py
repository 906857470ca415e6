"""Predicted time of a residual block fused into one kernel (schedules/fused_block.py) against the same block
run as separate kernels, for the fuse_blocks pass to decide per block:

    t_fused   = a_f * flops_f / peak + a_b * bytes_f / bandwidth + a_o * outputs * 1 ns + a_c * 1 us
    t_unfused = sum over its three convs of the fastest lowering's prediction (cost/model.py)

flops_f counts what the fused kernel computes: the expand conv over the map's rows, a band's first k - s
rows twice (band count from ``fused_block.default_bands``, the rule the kernel uses, so a prediction
describes the code that runs), and the channels rounded up to the SIMD width. bytes_f is what it moves
from memory: input, output (and the residual it reads), weights; its intermediates stay in cache by design.
The unfused convs' predictions include their intermediates' traffic, so the difference is the bytes saved
against the rows recomputed. A fused block reads and writes channel-blocked tensors where its neighbours do
(passes/block_layout.py), so it forces no relayout on them. The coefficients a are fitted by ``convopt calibrate`` on generic blocks
(cost/calibrate.FUSED_SHAPES) under the key "fused_inverted_residual"; a profile without them predicts
nothing (None), and fuse_blocks then leaves every block unfused.

The pointwise MLP (schedules/fused_mlp.py) has the same terms with its own coefficients
("fused_pointwise_mlp", fitted on cost/calibrate.MLP_SHAPES): flops_f = 2 H W (C E' + E' O'), no
recomputation; bytes_f as above, except that its weights are read once per row where they don't fit in
half of L2 (each row's tiles stream both weight matrices), which is what makes wide late stages lose.
"""

from __future__ import annotations

import numpy as np

from ..schedules import fused_mlp
from ..schedules.fused_block import InvertedResidual, default_bands, round_up
from ..schedules.fused_mlp import PointwiseMLP
from .formulas import F32
from .model import CALL_UNIT, OUTPUT_UNIT, predict_all
from .profile import FEATURES, MachineProfile

KEY = "fused_inverted_residual"
MLP_KEY = "fused_" + fused_mlp.KIND
# fuse only where the fused kernel is predicted faster by more than this: its coefficients are fitted on
# blocks timed alone, and in a model the unfused kernels beat their predictions by about as much. Measured in
# the model on mobilenetv2_100 (benchmarks/block_fusion.py, Zen 4): fused is 1.07-1.84x faster where the
# predicted gain is >= 1.46x (112-28 px), 0.70-0.98x where it is <= 1.24x (14 and 7 px); end to end, margin
# 1.25 / 1.1 / 1.0 fused 6 / 13 / 16 blocks and ran 4.34 / 4.51 / 4.85 ms against 5.09 unfused.
FUSED_MARGIN = 1.25


def expand_rows(block: InvertedResidual, bands: int) -> int:
    """Input rows the fused kernel's expand stage computes per image: each band's rows of the map once, its
    first k - s rows again where the band above computed them too (fused_block.prim_func's ring)."""
    d = block.depthwise
    k, s, p, H, OH = d.kernel[0], d.stride[0], d.padding[0], block.expand.height, d.out_height
    th = -(-OH // bands)
    return sum(len(range(max(p, b * th * s), min(H + p, (min(OH, b * th + th) - 1) * s + k)))
               for b in range(-(-OH // th)))


def coefficient_key(block: InvertedResidual | PointwiseMLP) -> str:
    """The profile's coefficient key of the fused kernel that runs ``block``."""
    return MLP_KEY if isinstance(block, PointwiseMLP) else KEY


def mlp_terms(block: PointwiseMLP, lanes: int, l2_bytes: int) -> dict[str, float]:
    """The fused pointwise MLP's work (see the module docstring)."""
    e = block.expand
    n, C, H, W, O = e.batch, e.in_channels, e.height, e.width, block.out_channels
    Ep, Op = round_up(e.out_channels, lanes), round_up(O, lanes)
    weights = C * Ep + Ep * Op
    reads = 1 if F32 * weights <= l2_bytes // 2 else n * H
    outputs = n * O * H * W
    bytes_ = F32 * (n * C * H * W + outputs * (2 if block.residual else 1) + weights * reads + Ep + Op)
    return {"flops": 2 * n * H * W * (C * Ep + Ep * Op), "bytes": bytes_, "outputs": outputs, "calls": 1}


def fused_terms(block: InvertedResidual, lanes: int, cores: int = 1) -> dict[str, float]:
    """The fused inverted residual kernel's work: "flops", "bytes", "outputs", "calls" (module docstring)."""
    e, d = block.expand, block.depthwise
    n, C, O = e.batch, e.in_channels, block.out_channels
    Ep = round_up(e.out_channels, lanes)
    Op = round_up(O, lanes) if block.project is not None else 0  # no projection: no GEMM, no weights
    k = d.kernel[0]
    outputs = n * O * d.out_height * d.out_width
    flops = 2 * n * (Ep * C * expand_rows(block, default_bands(block, cores)) * e.width
                     + Ep * k * k * d.out_height * d.out_width + Ep * Op * d.out_height * d.out_width)
    weights = C * Ep + k * k * Ep + Ep * Op + 2 * Ep + Op
    bytes_ = F32 * (n * C * e.height * e.width + outputs * (2 if block.residual else 1) + weights)
    return {"flops": flops, "bytes": bytes_, "outputs": outputs, "calls": 1}


def block_terms(block: InvertedResidual | PointwiseMLP, lanes: int, profile: MachineProfile) -> dict[str, float]:
    """The work of the fused kernel that runs ``block`` (either kind) on ``profile``'s machine."""
    if isinstance(block, PointwiseMLP):
        return mlp_terms(block, lanes, profile.caches.get("L2", 1 << 20))
    return fused_terms(block, lanes, profile.cores)


def fused_features(block: InvertedResidual | PointwiseMLP, profile: MachineProfile, lanes: int) -> np.ndarray:
    terms = block_terms(block, lanes, profile)
    scale = {"flops": 1 / profile.peak_flops, "bytes": 1 / profile.bandwidth, "outputs": OUTPUT_UNIT,
             "calls": CALL_UNIT}
    return np.array([terms.get(f, 0.0) * scale.get(f, 0.0) for f in FEATURES])


def predict_fused(block: InvertedResidual | PointwiseMLP, profile: MachineProfile, lanes: int) -> float | None:
    coefficients = profile.coefficients.get(coefficient_key(block))
    if coefficients is None:
        return None
    return float(fused_features(block, profile, lanes) @ np.array([coefficients.get(f, 0.0) for f in FEATURES]))


def predict_unfused(block: InvertedResidual | PointwiseMLP, profile: MachineProfile, lanes: int) -> float:
    """The block's convs, each with its fastest predicted lowering, in channel blocks where its channels allow
    (as block_layout would store them between convs)."""
    total = 0.0
    for spec in block.convs:
        blocked = spec.in_channels % lanes == 0 and spec.out_channels % lanes == 0
        total += min(predict_all(spec, profile, lanes, blocked=blocked).values())
    return total


def predict_block(block: InvertedResidual | PointwiseMLP, profile: MachineProfile, lanes: int) -> tuple[float, float] | None:
    """(fused seconds, unfused seconds), or None when the profile has no fused coefficients."""
    fused = predict_fused(block, profile, lanes)
    if fused is None:
        return None
    return fused, predict_unfused(block, profile, lanes)
