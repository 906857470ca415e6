"""The tile rules shared by the schedules and the cost formulas (convopt/schedules/tiling.py)."""

import re

import numpy as np
import pytest

from convopt.schedules import tiling
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.kernel import scheduled_module

from .conv_cases import LANES, error_against_torch, host


def test_pick_tile_takes_a_divisor_down_to_half_the_target_before_a_guarded_tail():
    assert tiling.pick_tile(7, 16) == 7 and tiling.pick_tile(16, 16) == 16  # the whole extent when it fits
    assert tiling.pick_tile(56, 16) == 14 and tiling.pick_tile(112, 16) == 16
    assert tiling.pick_tile(18, 16) == 9 and tiling.pick_tile(10, 8) == 5 and tiling.pick_tile(20, 16) == 10
    assert tiling.pick_tile(19, 16) == 16 and tiling.pick_tile(38, 16) == 16  # no divisor in [8, 16]: guarded


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("name, spec", [
    ("depthwise", ConvSpec(1, 32, 18, 18, 32, (9, 9), padding=(4, 4), groups=32)),
    ("direct", ConvSpec(1, 32, 10, 10, 32, (1, 1))),
], ids=lambda v: v.describe() if isinstance(v, ConvSpec) else v)
def test_rows_that_a_tile_divides_get_no_guarded_tile(name, spec, lanes):
    """18 and 10 columns: tiles of 9 (or 6) and 5, not 16 or 8 and a guarded last one (every unrolled column
    of a guarded tile tests its bound: 3x slower for the 9x9 depthwise conv on Intel AVX-512)."""
    weight = np.ones((spec.out_channels, spec.in_per_group, *spec.kernel), np.float32)
    script = scheduled_module(name, spec, weight, host(lanes), in_block=lanes, out_block=lanes)[0].script()
    assert not re.search(r"T\.where\([^)]*\bx_", script)  # (a band of rows may still be guarded)
    assert error_against_torch(name, spec, True, False, "gelu", lanes=lanes, blocked=True) < 1e-5
