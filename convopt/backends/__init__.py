"""Backends: IR -> something that runs: ``torch_backend`` (PyTorch kernels, training) and ``tvm_backend`` (TVM)."""
