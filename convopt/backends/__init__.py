"""Backends: IR -> something that runs. ``torch_backend`` now; the TVM backend comes next."""
