"""convopt: a compiler-style graph optimizer for PyTorch convolutional networks.

    import convopt
    fast = convopt.optimize(model, example_inputs)   # a drop-in callable; fast.graph is the IR
    convopt.tune(model, example_inputs, time_budget="15m")  # records that optimize() applies afterwards
"""

from .capture import CaptureError, capture
from .backends.tvm_backend import ArtifactError
from .optimize import CheckError, OptimizedModule, load, optimize
from .tuning.job import TuningSummary, tune

__version__ = "0.1.0"
__all__ = ["optimize", "tune", "load", "capture", "TuningSummary", "OptimizedModule", "CaptureError", "CheckError",
           "ArtifactError", "__version__"]
