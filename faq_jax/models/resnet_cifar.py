"""ResNet-20 for CIFAR (He et al. 2016, section 4.2), float or FAQ-quantized.

Stem: 3x3 conv (16, stride 1, pad 1) + BN + ReLU (no max-pool); three stages of three
:class:`~faq_jax.models.resnet.BasicBlock` s with 16/32/64 channels (stride 2 at stages 2
and 3); option-B shortcuts (1x1 conv + BN) where the shape changes; global average pool; fc.
About 0.27M parameters.

Names follow torchvision's ResNet (this network has no torchvision counterpart, but a
torchvision-style torch model built from ``torchvision.models.resnet.BasicBlock`` converts
with the same table): ``conv1``, ``bn1``, ``layer{1-3}_{i}/conv{1,2}``, ``bn{1,2}``,
``downsample_0``/``downsample_1``, ``fc``. Activation quantizers: ``act`` (stem ReLU),
``layer*_*/act1``, ``layer*_*/act2`` (after the residual add), ``fc_input`` (re-quantizes
the pooled features before ``fc``); the image passes ``input_quant`` first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from faq_jax import layers
from faq_jax.models import resnet
from faq_jax.policy import Policy


class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2) with basic blocks; input NHWC 32x32, normalised."""

    stage_sizes: Sequence[int] = (3, 3, 3)
    width: int = 16
    policy: Policy | None = None
    num_classes: int = 10
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        p, dt = self.policy, self.dtype
        x = layers.InputQuant(policy=p, name="input_quant")(x)
        x = layers.Conv(self.width, (3, 3), (1, 1), layers.torch_pad(3, 1), policy=p,
                        dtype=dt, name="conv1")(x)
        x = layers.BatchNorm(policy=p, name="bn1")(x, train)
        x = layers.ActQuant(policy=p, name="act")(x)
        in_planes = self.width
        for stage, n in enumerate(self.stage_sizes):
            planes = self.width * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                down = stride != 1 or in_planes != planes
                x = resnet.BasicBlock(planes, stride, down, policy=p, dtype=dt,
                                      name=f"layer{stage + 1}_{i}")(x, train)
                in_planes = planes
        x = layers.global_avg_pool(x)
        x = layers.ActQuant(relu=False, policy=p, name="fc_input")(x)
        return layers.Dense(self.num_classes, policy=p, dtype=dt,
                            kernel_init=resnet.torch_linear_kernel_init,
                            bias_init=resnet.torch_linear_bias_init(x.shape[-1]),
                            name="fc")(x)

    def roles(self) -> dict[str, str]:
        """Module paths of the policy roles (first conv, fc, last ReLU, fc's input)."""
        last = f"layer{len(self.stage_sizes)}_{self.stage_sizes[-1] - 1}"
        return {"first": "conv1", "last": "fc", "last_act": f"{last}/act2",
                "classifier_input": "fc_input"}


def resnet20(*, policy: Policy | None = None, num_classes: int = 10,
             dtype: Any = None) -> ResNetCifar:
    """CIFAR ResNet-20: 3 stages x 3 basic blocks, 16/32/64 channels (~0.27M parameters)."""
    return ResNetCifar(stage_sizes=(3, 3, 3), policy=policy, num_classes=num_classes,
                       dtype=dtype)
