import os
import tempfile

import pytest
import torch

# Verify the IR between every pass in every test.
os.environ["CONVOPT_VERIFY"] = "1"
# The machine profile (convopt/cost) is measured once per test session into a fresh cache, not the user's.
os.environ.setdefault("CONVOPT_CACHE_DIR", tempfile.mkdtemp(prefix="convopt-cache-"))
torch.set_num_threads(2)


def rel_err(actual, expected) -> float:
    from convopt.optimize import relative_error

    return relative_error(actual, expected)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
