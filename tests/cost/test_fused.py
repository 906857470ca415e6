"""The fused block's cost terms and the decision's inputs: what the kernel computes (rows recomputed, padded channels),
the bytes it moves, and no prediction without coefficients."""

import pytest

from convopt.cost.fused import KEY, expand_rows, fused_terms, predict_block, predict_unfused
from convopt.schedules.fused_block import InvertedResidual

from .profiles import fixed_profile


def test_the_terms_count_the_rows_recomputed_and_the_padded_channels():
    block = InvertedResidual.of(24, 144, 24, 56, 56, 3)  # residual, O = 24 padded to 32 lanes
    assert expand_rows(block, 1) == 56  # one band: each row of the map once, none of the padding
    assert expand_rows(block, 2) == 58  # two bands of 28 rows: the second recomputes the first's last 2
    assert expand_rows(InvertedResidual.of(16, 96, 24, 112, 112, 3, 2), 2) == 113  # stride 2: 1 row again
    terms = fused_terms(block, 16, cores=2)
    expand = 2 * 144 * 24 * 58 * 56
    assert terms["flops"] == expand + 2 * 144 * 9 * 56 * 56 + 2 * 144 * 32 * 56 * 56
    assert terms["bytes"] == 4 * (24 * 56 * 56 + 2 * 24 * 56 * 56 + 24 * 144 + 9 * 144 + 144 * 32 + 2 * 144 + 32)
    partial = InvertedResidual.of(24, 144, None, 56, 56, 3)  # up to a squeeze-excite: no projection
    assert fused_terms(partial, 16)["flops"] < terms["flops"] and fused_terms(partial, 16)["outputs"] == 144 * 56 * 56


def test_no_fused_coefficients_no_prediction():
    profile = fixed_profile()
    block = InvertedResidual.of(16, 64, 16, 28, 28, 3)
    assert predict_block(block, profile, 16) is None
    profile.coefficients[KEY] = {"flops": 1.0, "bytes": 1.0}
    fused, unfused = predict_block(block, profile, 16)
    assert fused > 0 and unfused == pytest.approx(predict_unfused(block, profile, 16))




def test_a_pointwise_mlp_has_its_own_coefficients_and_rereads_weights_that_leave_l2():
    from convopt.cost.fused import MLP_KEY, block_terms
    from convopt.schedules.fused_mlp import PointwiseMLP

    profile = fixed_profile()
    narrow, wide = PointwiseMLP.of(40, 160, 40, 56, 56), PointwiseMLP.of(320, 1280, 320, 7, 7)
    terms = block_terms(narrow, 16, profile)
    assert terms["flops"] == 2 * 56 * 56 * (40 * 160 + 160 * 48)  # O = 40 padded to 48
    weights = 40 * 160 + 160 * 48
    assert terms["bytes"] == 4 * (40 * 56 * 56 + 2 * 40 * 56 * 56 + weights + 160 + 48)  # residual: read + write
    assert 4 * (320 * 1280 * 2) > profile.caches["L2"] // 2  # the wide block's weights leave half of L2 ...
    wide_terms = block_terms(wide, 16, profile)
    assert wide_terms["bytes"] > 4 * 7 * 320 * 1280 * 2  # ... and are read once per row
    profile.coefficients[KEY] = {"flops": 1.0, "bytes": 1.0}  # the inverted residual's: not the MLP's
    assert predict_block(narrow, profile, 16) is None
    profile.coefficients[MLP_KEY] = {"flops": 1.0, "bytes": 1.0}
    fused, unfused = predict_block(narrow, profile, 16)
    assert fused > 0 and unfused == pytest.approx(predict_unfused(narrow, profile, 16))


def test_a_conv_chain_counts_the_ring_rows_its_first_conv_computes_and_rereads_wide_weights():
    from convopt.cost.fused import CHAIN_KEYS, block_terms, coefficient_key
    from convopt.schedules.fused_chain import ConvChain

    profile = fixed_profile()
    pair = ConvChain.of(24, 24, 24, 28, 28)  # 24 channels padded to 32 inside, residual
    assert coefficient_key(pair) == "fused_conv_pair" and coefficient_key(
        ConvChain.of(64, 16, 64, 8, 8, bottleneck=True)) == "fused_bottleneck" and len(CHAIN_KEYS) == 2
    terms = block_terms(pair, 16, profile)
    rows_a = 28 + 2  # two bands of 14 rows: the second computes the first's last row and its own first again
    assert terms["flops"] == 2 * (rows_a * 28 * 9 * 24 * 32 + 28 * 28 * 9 * 32 * 32)
    weights = 9 * 24 * 32 + 9 * 32 * 32
    assert terms["bytes"] == 4 * (24 * 28 * 28 + 2 * 24 * 28 * 28 + 32 + 32 + weights)
    wide = ConvChain.of(512, 512, 512, 7, 7)  # 9.4 MB of weights per conv, read once per row of its stage
    assert block_terms(wide, 16, profile)["bytes"] > 4 * 9 * 512 * 512 * 7 * 2
    bottleneck = ConvChain.of(64, 16, 64, 8, 8, bottleneck=True)
    rows_a = 8 + 2  # two bands of 4 rows: 5 rows of A each
    assert block_terms(bottleneck, 16, profile)["flops"] == 2 * (rows_a * 8 * 64 * 16 + 64 * 9 * 16 * 16 + 64 * 16 * 64)
    assert predict_block(pair, profile, 16) is None  # no chain coefficients in this profile
    profile.coefficients["fused_conv_pair"] = {"flops": 1.0}
    fused, unfused = predict_block(pair, profile, 16)
    assert fused > 0 and unfused == pytest.approx(predict_unfused(pair, profile, 16))


def test_dense_chains_need_a_wider_margin():
    from convopt.cost.fused import CHAIN_FACTOR, FUSED_MARGIN, fusion_margin as margin
    from convopt.schedules.fused_chain import ConvChain
    from convopt.schedules.fused_mlp import PointwiseMLP

    assert margin(InvertedResidual.of(16, 64, 16, 28, 28, 3)) == margin(PointwiseMLP.of(16, 64, 16, 8, 8)) == FUSED_MARGIN
    chain = margin(ConvChain.of(16, 16, 16, 28, 28))
    assert chain == pytest.approx(FUSED_MARGIN * CHAIN_FACTOR) and chain > FUSED_MARGIN


def test_whole_convnext_blocks_need_a_wider_margin_than_their_mlp_and_inception_next_blocks_none():
    from convopt.cost.fused import FUSED_MARGIN, MIXER_FACTOR, fusion_margin as margin
    from convopt.schedules.fused_mlp import PointwiseMLP

    convnext = PointwiseMLP.of(40, 160, 40, 56, 56, mixer_kernel=7, norm=True)
    assert margin(convnext) == pytest.approx(FUSED_MARGIN * MIXER_FACTOR)
    assert margin(convnext) > margin(PointwiseMLP.of(40, 160, 40, 56, 56)) == FUSED_MARGIN
    # InceptionNeXt's band mixer: fused wherever predicted faster at all (measured in the whole model)
    assert margin(PointwiseMLP.of(40, 160, 40, 56, 56, mixer_kernel=9, norm=False)) == pytest.approx(1.0)
