import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# Verify the IR between every pass in every test.
os.environ["CONVOPT_VERIFY"] = "1"


def _fresh_cache_with_the_shipped_profiles() -> str:
    """A cache folder for the test session (not the user's), holding each shipped machine profile as if
    measured here: the tests' lowering and fusion choices then follow the shipped peak and bandwidth, not
    this run's measurement of them, which moves on a shared machine (and more with one test worker per core
    measuring at once) and with it any choice that is close. A host without a shipped profile measures its
    own once (tests/cost/test_profile.py tests the measuring itself, in folders of its own)."""
    from convopt.cost.profile import shipped_profiles

    folder = Path(tempfile.mkdtemp(prefix="convopt-cache-"))
    for key, profile in shipped_profiles().items():
        (folder / f"machine-{key}.json").write_text(profile.to_json())
    return str(folder)


# set once by the first process; test workers (pytest-xdist) inherit it
if "CONVOPT_CACHE_DIR" not in os.environ:
    os.environ["CONVOPT_CACHE_DIR"] = _fresh_cache_with_the_shipped_profiles()
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
