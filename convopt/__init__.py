"""convopt: a compiler-style graph optimizer for PyTorch convolutional networks.

    import convopt
    fast = convopt.optimize(model, example_inputs)   # a drop-in callable; fast.graph is the IR
"""

from .capture import CaptureError, capture
from .optimize import CheckError, OptimizedModule, load, optimize

__version__ = "0.1.0"
__all__ = ["optimize", "load", "capture", "OptimizedModule", "CaptureError", "CheckError", "__version__"]
