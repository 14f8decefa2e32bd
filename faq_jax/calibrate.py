"""Activation calibration (FAQ.md section 3): set each activation's l from data, once.

The *unquantized* network (BN in inference mode) sees a few training batches. Every
activation quantizer takes the 99.99th (8-bit) or 99.9th (lower widths) percentile of its
tensor per batch; y_max is the maximum over batches, rounded up to a power of two, and
l = log2(y_max) - b. Since ceil(log2 .) is monotone, the layer sows its per-batch l and
the maximum over batches is that l. These l's are then frozen for fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from faq_jax import layers


def calibrate(model: nn.Module, variables: dict[str, Any], batches: Iterable[jax.Array],
              ) -> dict[str, Any]:
    """Returns the ``quant`` collection with calibrated l's.

    Args:
      model: the quantized model (its policy gives each site's width and percentile).
      variables: ``params`` and ``batch_stats`` (and an existing ``quant`` to replace).
      batches: image batches (global arrays or NumPy), e.g. 5 training batches.
    """
    base = {k: v for k, v in variables.items() if k in ("params", "batch_stats", "quant")}
    if "quant" not in base:
        raise ValueError("the model has no activation quantizers to calibrate "
                         "(is the policy None?)")

    @jax.jit
    def sow(base, images):
        _, sown = model.apply(base, images, train=False, mutable=[layers.CALIB])
        # A site sows a tuple, one l per call (a module applied twice sows twice).
        return jax.tree.map(lambda t: jnp.max(jnp.stack(t)), sown[layers.CALIB],
                            is_leaf=lambda x: isinstance(x, tuple))

    result = None
    for images in batches:
        lsbs = sow(base, images)
        result = lsbs if result is None else jax.tree.map(jnp.maximum, result, lsbs)
    if result is None:
        raise ValueError("calibration received no batches")
    expected = jax.tree.structure(base["quant"])
    if jax.tree.structure(result) != expected:
        raise ValueError("calibration did not reach every activation quantizer: "
                         f"got {jax.tree.structure(result)}, expected {expected}")
    return jax.tree.map(lambda a, old: a.astype(old.dtype), result, base["quant"])
