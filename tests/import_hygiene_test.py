"""The core imports neither TensorFlow nor torch: GPU/TPU images often have neither."""

import subprocess
import sys

CORE = """
import sys
import faq_jax
from faq_jax import (analysis, calibrate, checkpointing, config, converted, data, export,
                     keypaths, layers, models, optim, policy, quant, sharding, steps, train,
                     trainer, workdir)
from faq_jax.config import check, defaults, demo
from faq_jax.data import cifar10, digits, folder, imagenet, pipeline
from faq_jax.export import cli, executor, exporter, graph, intnet
import jax, jax.numpy as jnp
for arch in models.ARCHS:  # imports every model module
    models.create(arch, validate=False)
m = models.create("resnet20", policy=policy.W4A4, num_classes=10)
v = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
heavy = sorted(k for k in sys.modules if k.split(".")[0] in ("tensorflow", "torch",
                                                            "torchvision", "tensorflow_datasets"))
print("HEAVY", heavy)
assert not heavy, heavy
"""

DIGITS = """
import sys
from faq_jax import data
from faq_jax.config import defaults, demo
c = demo.get_config()
next(data.train_batches(c, local_batch_size=8))
next(data.eval_batches(c, local_batch_size=8))
assert "tensorflow" not in sys.modules
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_core_imports_without_tensorflow_or_torch():
    r = _run(CORE)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]


def test_embedded_dataset_needs_no_tensorflow():
    r = _run(DIGITS)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
