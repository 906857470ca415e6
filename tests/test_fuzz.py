"""A differential fuzzer: random small CNNs (tests/fuzz_models.py) through optimize() on the TVM CPU target
(with the cost model's lowerings) and on the torch target, compared with eager by relative error.

CI runs the "ci" profile (a few dozen models, every run new ones and the shrunk failures of earlier runs
from hypothesis' database); ``pytest -m fuzz --hypothesis-profile=long tests/test_fuzz.py`` runs for hours
(``CONVOPT_FUZZ_LOG=FILE`` appends a line per model that passed: seconds, lowering, spec).
Every failure found becomes an entry of ``REGRESSIONS``, which run first, every time.
"""

import os
import time
import warnings

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import convopt
from tests.conftest import rel_err
from tests.fuzz_models import build, model_specs

# the "ci" and "long" profiles are registered in tests/conftest.py; without --hypothesis-profile=long the
# fuzzer runs the ci one (other hypothesis tests keep their own settings)
FUZZ_SETTINGS = settings.default if settings.default.max_examples > 1000 else settings.get_profile("ci")

# specs the fuzzer once failed on (fixed since), and edge cases kept on purpose
REGRESSIONS = [
    ((1, 1, 5, 5), (("conv", 1, (7, 7), 1, 1, 1, 6, False, "none"),)),  # kernel larger than the map
    ((2, 6, 9, 7), (("conv", 6, (3, 3), 2, 2, 6, 2, True, "relu"), ("se", 4))),  # depthwise, dilated, SE
    # found: the first NaN-propagating max/min copied operands, and mish (a clamp in a fast tanh of a
    # softplus with its own clamped exp) grew until compiling it never finished
    ((1, 2, 8, 17), (("residual", 3, "mish"), ("se", 4), ("depthwise", 7, 1, "relu"))),
]


LOWERINGS = [None, None, "direct", "im2col", "im2win", "winograd2", "winograd4", "fft"]


def _check(spec, lowering=None):
    start = time.perf_counter()
    model, x = build(spec)
    with torch.no_grad():
        expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-op fallbacks and cost-model notices are not failures here
        for target in ("cpu", "torch"):
            forced = lowering if target == "cpu" else None  # None: the cost model chooses
            fast = convopt.optimize(model, x, target=target, check=False, lowering=forced)
            with torch.no_grad():
                err = rel_err(fast(x), expected)
            assert err <= 1e-4, f"target {target} (lowering {forced}): relative error {err:.3g} on {spec}"
    if os.environ.get("CONVOPT_FUZZ_LOG"):  # one line per model, for the long profile's report
        with open(os.environ["CONVOPT_FUZZ_LOG"], "a") as log:
            log.write(f"{time.perf_counter() - start:.2f}s {lowering} {spec}\n")


@pytest.mark.fuzz
@FUZZ_SETTINGS
@given(spec=model_specs(), lowering=st.sampled_from(LOWERINGS))
@example(spec=REGRESSIONS[0], lowering=None)
@example(spec=REGRESSIONS[1], lowering="winograd4")
@example(spec=REGRESSIONS[2], lowering="direct")
def test_random_cnns_match_eager(spec, lowering):
    _check(spec, lowering)
