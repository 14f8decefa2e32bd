"""Deferred imports of the two heavy frameworks, in the one order that is safe.

Importing torchvision (through its ``triton`` dependency) after TensorFlow has been
loaded crashes the interpreter with a segfault on some installations. Importing torch and
triton first avoids it (torch alone does not). Every TensorFlow import in faq_jax goes
through :func:`tensorflow`, which loads them first whenever they are installed, so a
process that later converts weights (torch, torchvision) survives.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from faq_jax import console


def _preload_torch() -> None:
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is not None:
        import torch  # noqa: F401
    if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def tensorflow() -> ModuleType:
    """Returns ``tensorflow`` (GPUs hidden), loading torch and triton first if installed."""
    if sys.modules.get("tensorflow") is None:
        _preload_torch()
        # Its native libraries print INFO lines on import whatever TF_CPP_MIN_LOG_LEVEL says.
        try:
            with console.native_stderr_silenced(not console.verbose()):
                import tensorflow  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "TensorFlow is not installed, and config.data.loader='tf' reads data with it "
                "(TFDS, image resizing, ImageNet augmentation). Install it (pip install "
                "tensorflow-cpu), or, for CIFAR-10 archives and image folders already at the "
                "model's size, set --config.data.loader=numpy.") from e
    import tensorflow as tf

    # tf.data runs on the host; it must never grab accelerator memory from JAX.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # Already initialised: visibility can no longer change.
        pass
    return tf


def tensorflow_datasets() -> ModuleType:
    """Returns ``tensorflow_datasets`` after :func:`tensorflow`."""
    tensorflow()
    import tensorflow_datasets as tfds

    return tfds


def torch() -> ModuleType:
    """Returns ``torch``; raises a clear error when the ``convert`` extra is missing."""
    try:
        import torch as torch_module
    except ImportError as e:  # pragma: no cover - depends on the environment.
        raise ImportError(
            "torch is not installed: install the conversion extra with "
            "`pip install 'faq_jax[convert]'`."
        ) from e
    return torch_module
