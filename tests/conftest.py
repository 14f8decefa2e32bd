"""Test-session setup: 8 fake CPU devices, a shared compilation cache, and torch (and
triton) loaded before TensorFlow.

XLA_FLAGS must be set before jax initialises its backends. torch goes first because
importing torchvision after TensorFlow crashes some installations (see
faq_jax/lazy_imports.py); the library's own lazy imports keep that order too.
"""

import atexit
import importlib.util
import os
import shutil
import tempfile

# The 8 fake devices are threads: on a loaded 2-core machine one can wait minutes for the
# others inside a collective, past XLA:CPU's default timeout (which aborts the process).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_collective_timeout_seconds=1200 "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=1200")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Much of the suite's time is XLA compiling the same few train steps again in test after test
# (and in the subprocesses of the CLI tests). One persistent compilation cache per test
# session, made by the first process and inherited by pytest-xdist's workers and every
# subprocess, compiles each of them once (each that takes over jax's threshold of a second;
# shorter compiles are not cached). Setting a size turns on jax's file lock, so two
# workers never read an entry that the other is still writing.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _xla_cache = tempfile.mkdtemp(prefix="faq_jax_tests_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache
    atexit.register(shutil.rmtree, _xla_cache, ignore_errors=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished tiny run of the embedded demo (pretrain, calibrate, fine-tune; 16 steps
    per training stage, checkpoints every 8): (workdir, summary). Tests copy it before
    changing anything in it."""
    from faq_jax import train  # noqa: PLC0415
    from faq_jax.config import demo  # noqa: PLC0415

    c = demo.get_config()
    c.max_steps = 16
    c.checkpoint_every_steps = 8
    c.keep_checkpoints = 3
    c.eval_every_epochs = 100
    c.eval_batch_size = 152  # 300 eval digits: 2 batches, the second padded
    workdir = tmp_path_factory.mktemp("tiny_run") / "w"
    summary = train.train_and_evaluate(c, str(workdir))
    summary.pop("variables")
    return workdir, summary
