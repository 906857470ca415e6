import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

# Verify the IR between every pass in every test.
os.environ["CONVOPT_VERIFY"] = "1"
# The machine profile (convopt/cost) is measured once per test session into a fresh cache, not the user's.
os.environ.setdefault("CONVOPT_CACHE_DIR", tempfile.mkdtemp(prefix="convopt-cache-"))
torch.set_num_threads(2)

# tests/test_fuzz.py: "ci" runs in the test suite; --hypothesis-profile=long runs the fuzzer for hours
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile("long", max_examples=1_000_000, deadline=None, suppress_health_check=_SLOW_OK)


class Fn(torch.nn.Module):
    """A function as a module (the op under test)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def cuda_sources(executable) -> list[str]:
    """The CUDA source of every CUDA module a compiled Relax executable imports."""
    def modules(m):
        yield m
        for child in m.imports:
            yield from modules(child)

    return [m.inspect_source() for m in modules(executable.mod) if m.kind == "cuda"]


def rel_err(actual, expected) -> float:
    from convopt.optimize import relative_error

    return relative_error(actual, expected)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
