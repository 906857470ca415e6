import os

import pytest
import torch

# Verify the IR between every pass in every test.
os.environ["CONVOPT_VERIFY"] = "1"
torch.set_num_threads(2)


def rel_err(actual, expected) -> float:
    from convopt.optimize import relative_error

    return relative_error(actual, expected)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
