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
the L2 beside a row's buffers (each row's tiles stream both weight matrices), which is what makes wide late
stages lose.

ConvNeXt's whole block (kind "convnext_block": the MLP with its depthwise conv and norm) uses the MLP's
terms and coefficients, its FLOPs counting the depthwise conv and the norm's passes too (no fit of its own:
measured 0.56-1.19x fused in convnext_atto, under the margin everywhere; docs/block_fusion.md); its unfused
prediction counts its three convs, not the norm's kernel.

The dense conv chains (schedules/fused_chain.py; keys "fused_conv_pair", "fused_bottleneck", fitted on
cost/calibrate.CHAIN_SHAPES) likewise: flops_f = 2 (rows_A W_A k_A^2 C M_A' + OH OW (k_B^2 M_A' M_B' [+ M_B' O']))
with rows_A the rows of A the ring computes (a band's first k_B - s_B twice), bytes_f the input, output, skip
and each conv's weights, read once per row of its stage where they don't fit in half of L2. Their unfused
prediction is the convs' best lowerings, Winograd included: the fused kernel's 3x3 stages are direct convs.
"""

from __future__ import annotations

import numpy as np

from ..schedules import fused_chain, fused_mlp, tiling
from ..schedules.fused_block import InvertedResidual, default_bands, round_up
from ..schedules.fused_chain import ConvChain
from ..schedules.fused_mlp import PointwiseMLP
from .formulas import F32
from .model import CALL_UNIT, OUTPUT_UNIT, predict_all
from .profile import FEATURES, MachineProfile

KEY = "fused_inverted_residual"
MLP_KEY = "fused_" + fused_mlp.KIND
CHAIN_KEYS = tuple("fused_" + kind for kind in fused_chain.KINDS)
KEYS = (KEY, MLP_KEY, *CHAIN_KEYS)  # every fused kernel's coefficients
Block = InvertedResidual | PointwiseMLP | ConvChain
# fuse only where the fused kernel is predicted faster by more than this: its coefficients are fitted on
# blocks timed alone, and in a model the unfused kernels beat their predictions by about as much. Measured in
# the model on mobilenetv2_100 (benchmarks/block_fusion.py, Zen 4): fused is 1.07-1.84x faster where the
# predicted gain is >= 1.46x (112-28 px), 0.70-0.98x where it is <= 1.24x (14 and 7 px); end to end, margin
# 1.25 / 1.1 / 1.0 fused 6 / 13 / 16 blocks and ran 4.34 / 4.51 / 4.85 ms against 5.09 unfused.
FUSED_MARGIN = 1.25
# the dense chains' fused kernel ran 1.1-1.6x slower inside resnet18, resnet50 and repvgg_a0 than its
# coefficients (fitted on chains timed alone) predict, the bottlenecks most; at 1.25 the cost model fused
# resnet50's 256->128->128->512 stride-2 block (predicted 1.27x faster), which measured 0.83x
CHAIN_FACTOR = 1.3
# a whole ConvNeXt / InceptionNeXt block (the MLP's coefficients with the mixer's FLOPs: no fit of its own) ran
# 1.38-1.5x slower inside inception_next_atto than predicted (Intel, benchmarks/results/
# block_fusion_inception_next_atto_rocketlake.md); at 1.25 the cost model fused its 56 px blocks (predicted
# 1.43x faster), which measured 0.93-0.95x. That held for ConvNeXt's blocks (convnext_atto, Intel, session 24:
# every block fused at margin 1.0 ran the model 1.02-1.06x slower), not for InceptionNeXt's, below
MIXER_FACTOR = 1.4
# InceptionNeXt's whole blocks (the band mixer, no norm): measured in place block by block they looked like
# losers at 56 px (0.91x) and small winners at 28/14 px (1.06-1.14x), but the whole model says otherwise:
# inception_next_atto with its blocks at 56-14 px fused (predicted 1.06-1.43x faster; the 7 px ones, predicted
# 0.53x, not) ran 0.865-0.884x the time of none fused, interleaved in one process (Intel, session 24); stages
# 1-2 alone 0.89-0.92x, stage 0 added 0.98x. So they fuse wherever predicted faster at all (margin 1.0)
BAND_MIXER_FACTOR = 1.0 / FUSED_MARGIN


def fusion_margin(block: "Block") -> float:
    """How much faster a block's fused kernel must be predicted for fuse_blocks to fuse it."""
    if isinstance(block, ConvChain):
        return FUSED_MARGIN * CHAIN_FACTOR
    if isinstance(block, PointwiseMLP) and block.mixer is not None:
        return FUSED_MARGIN * (MIXER_FACTOR if block.norm else BAND_MIXER_FACTOR)
    return FUSED_MARGIN


def ring_rows(d, H: int, bands: int, top: int | None = None) -> int:
    """Rows of a ring's producer (H rows) computed per image for the consumer conv ``d`` read in ``bands``
    bands (tiling.ring_band_rows). ``top``: the rows of padding above the map (default: d's own padding)."""
    return sum(tiling.ring_band_rows(d.kernel[0], d.stride[0], d.out_height, H,
                                     d.padding[0] if top is None else top, bands))


def expand_rows(block: InvertedResidual, bands: int) -> int:
    """Input rows the fused kernel's expand stage computes per image (fused_block.prim_func's ring)."""
    return ring_rows(block.depthwise, block.expand.height, bands, block.pads[0])


def coefficient_key(block: Block) -> str:
    """The profile's coefficient key of the fused kernel that runs ``block``."""
    if isinstance(block, ConvChain):
        return "fused_" + block.kind
    return MLP_KEY if isinstance(block, PointwiseMLP) else KEY


def chain_terms(chain: ConvChain, lanes: int, cores: int, l2_bytes: int) -> dict[str, float]:
    """The fused conv chain's work (see the module docstring)."""
    a, b = chain.convs[0], chain.convs[1]
    n, C = a.batch, a.in_channels
    padded = fused_chain.padded_channels(chain, lanes)
    rows_a = ring_rows(b, a.out_height, fused_chain.default_bands(chain, cores))
    out_pixels = b.out_height * b.out_width
    stage_weights = [a.kernel[0] ** 2 * C * padded[0], b.kernel[0] ** 2 * padded[0] * padded[1]]
    stage_rows = [rows_a, b.out_height]
    flops = 2 * n * (rows_a * a.out_width * stage_weights[0] + out_pixels * stage_weights[1])
    if len(chain.convs) == 3:
        stage_weights.append(padded[1] * padded[2])
        stage_rows.append(b.out_height)
        flops += 2 * n * out_pixels * stage_weights[2]
    weight_bytes = sum(F32 * w * (1 if F32 * w <= l2_bytes // 2 else n * rows)
                       for w, rows in zip(stage_weights, stage_rows))
    outputs = n * chain.out_channels * out_pixels
    bytes_ = F32 * (n * C * a.height * a.width + outputs * (2 if chain.residual else 1) + sum(padded)) + weight_bytes
    return {"flops": flops, "bytes": bytes_, "outputs": outputs, "calls": 1}


def mlp_terms(block: PointwiseMLP, lanes: int, l2_bytes: int) -> dict[str, float]:
    """The fused pointwise MLP's work (see the module docstring); with ConvNeXt's mixer, its depthwise conv's
    FLOPs too (the norm's two passes over the row are counted as part of it)."""
    e = block.expand
    n, C, H, W, O = e.batch, e.in_channels, e.height, e.width, block.out_channels
    Ep, Op = round_up(e.out_channels, lanes), round_up(O, lanes)
    weights = C * Ep + Ep * Op
    # read from memory once where they fit in a core's L2 beside a row's buffers (the row, its intermediate and
    # its output), else once per row: InceptionNeXt's 160->640->160 at 14 px (819 KB of weights, 1 MB L2) ran
    # fused at 85% of the FMA peak inside inception_next_atto (Zen 5), no weight stream; counted once per row
    # (the rule was half the L2) its prediction lost to the separate convs, which measured 1.8-2.2% slower
    # end to end (all six fused, one process, interleaved)
    reads = 1 if F32 * (weights + W * (C + Ep + Op)) <= l2_bytes else n * H
    outputs = n * O * H * W
    bytes_ = F32 * (n * C * H * W + outputs * (2 if block.residual else 1) + weights * reads + Ep + Op)
    flops = 2 * n * H * W * (C * Ep + Ep * Op)
    if block.mixer is not None:  # the taps the kernel computes (InceptionNeXt's: those of some branch) + the norm
        taps = block.mixer_taps or block.mixer.kernel[0] ** 2
        flops += 2 * n * H * W * round_up(C, lanes) * (taps + (2 if block.norm else 0))
    return {"flops": flops, "bytes": bytes_, "outputs": outputs, "calls": 1}


def fused_terms(block: InvertedResidual, lanes: int, cores: int = 1) -> dict[str, float]:
    """The fused inverted residual kernel's work: "flops", "bytes", "outputs", "calls" (module docstring)."""
    e, d = block.expand, block.depthwise
    n, C, O = e.batch, e.in_channels, block.out_channels
    Ep = round_up(e.out_channels, lanes)
    Op = round_up(O, lanes) if block.project is not None else 0  # no projection: no GEMM, no weights
    k = d.kernel[0]
    outputs = n * O * d.out_height * d.out_width
    flops = 2 * n * (Ep * C * expand_rows(block, default_bands(block, cores, lanes)) * e.width
                     + Ep * k * k * d.out_height * d.out_width + Ep * Op * d.out_height * d.out_width)
    weights = C * Ep + k * k * Ep + Ep * Op + 2 * Ep + Op
    bytes_ = F32 * (n * C * e.height * e.width + outputs * (2 if block.residual else 1) + weights)
    return {"flops": flops, "bytes": bytes_, "outputs": outputs, "calls": 1}


def block_terms(block: Block, lanes: int, profile: MachineProfile) -> dict[str, float]:
    """The work of the fused kernel that runs ``block`` (any kind) on ``profile``'s machine."""
    if isinstance(block, ConvChain):
        return chain_terms(block, lanes, profile.cores, profile.caches.get("L2", 1 << 20))
    if isinstance(block, PointwiseMLP):
        return mlp_terms(block, lanes, profile.caches.get("L2", 1 << 20))
    return fused_terms(block, lanes, profile.cores)


def fused_features(block: Block, profile: MachineProfile, lanes: int) -> np.ndarray:
    terms = block_terms(block, lanes, profile)
    scale = {"flops": 1 / profile.peak_flops, "bytes": 1 / profile.bandwidth, "outputs": OUTPUT_UNIT,
             "calls": CALL_UNIT}
    return np.array([terms.get(f, 0.0) * scale.get(f, 0.0) for f in FEATURES])


def predict_fused(block: Block, profile: MachineProfile, lanes: int) -> float | None:
    coefficients = profile.coefficients.get(coefficient_key(block))
    if coefficients is None:
        return None
    return float(fused_features(block, profile, lanes) @ np.array([coefficients.get(f, 0.0) for f in FEATURES]))


def predict_unfused(block: Block, profile: MachineProfile, lanes: int) -> float:
    """The block's convs, each with its fastest predicted lowering, in channel blocks where its channels allow
    (as block_layout would store them between convs; a conv from 3 input channels, a stem, writes blocks); and its pad op, where it has one, a pass over the
    expanded map at the measured bandwidth."""
    total = 0.0
    for spec in block.convs:
        blocked_output = spec.out_channels % lanes == 0
        blocked = spec.in_channels % lanes == 0 and blocked_output
        total += min(predict_all(spec, profile, lanes, blocked=blocked, blocked_output=blocked_output).values())
    if any(getattr(block, "pre_pad", ())):
        e, d = block.expand, block.depthwise
        total += F32 * e.batch * e.out_channels * (e.height * e.width + d.height * d.width) / profile.bandwidth
    return total


def predict_block(block: Block, profile: MachineProfile, lanes: int) -> tuple[float, float] | None:
    """(fused seconds, unfused seconds), or None when the profile has no fused coefficients."""
    fused = predict_fused(block, profile, lanes)
    if fused is None:
        return None
    return fused, predict_unfused(block, profile, lanes)
