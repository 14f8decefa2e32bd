"""XLA keeps each quantized activation computed once (quant._stored; RESULTS.md change 6).

Without the bfloat16 round trip of the codes, XLA:CPU fuses the cheap elementwise chain
BN -> residual add -> ReLU -> quantizer into every consumer, recomputing it (several blocks
deep) inside the transposes that feed the weight-gradient convolutions: a ResNet-50 W4A4
step ran 1.2x the float step instead of 0.95-0.98x. This test pins the fusion structure that
makes the difference, on the CPU backend only (other backends fuse by other rules).
"""

import re

import jax
import jax.numpy as jnp
import pytest

from faq_jax import models
from faq_jax import policy as policy_lib

BATCH = 8


def _activation_floors_per_fusion(hlo: str) -> list[int]:
    """For every fused computation: how many floor ops it applies to NHWC activations."""
    counts: list[int] = []
    in_fusion = False
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):  # a computation
            in_fusion = line.startswith(("%fused", "fused"))
            if in_fusion:
                counts.append(0)
        elif in_fusion and re.search(rf"= f32\[{BATCH},\d+,\d+,\d+\]\S* floor\(", line):
            counts[-1] += 1
    return counts


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU fusion rules")
def test_quantized_activations_are_not_recomputed_in_consumers():
    model = models.create("resnet20", policy=policy_lib.W4A4, num_classes=10)
    x = jnp.ones((BATCH, 32, 32, 3))
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
        return jnp.sum(logits)

    hlo = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()
    floors = _activation_floors_per_fusion(hlo)
    assert sum(floors) > 0, "no activation quantizer found in the HLO: test is stale"
    # One floor per fusion: the codes in the forward pass, or the STE mask in the backward.
    assert max(floors) == 1, (
        f"XLA recomputes quantizers inside consumer fusions again (floors per fusion, top 5: "
        f"{sorted(floors)[-5:]}); see benchmarks/RESULTS.md, change 6, and re-measure with "
        f"benchmarks/bench_train_step.py")
