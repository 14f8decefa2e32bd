"""Test-session setup: 8 fake CPU devices, and torch (and triton) loaded before TensorFlow.

XLA_FLAGS must be set before jax initialises its backends. torch goes first because
importing torchvision after TensorFlow crashes some installations (see
faq_jax/lazy_imports.py); the library's own lazy imports keep that order too.
"""

import importlib.util
import os

# The 8 fake devices are threads: on a loaded 2-core machine one can wait minutes for the
# others inside a collective, past XLA:CPU's default timeout (which aborts the process).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_collective_timeout_seconds=1200 "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=1200")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
