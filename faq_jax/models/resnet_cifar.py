"""CIFAR ResNets (He et al. 2016, section 4.2), float or FAQ-quantized.

Stem: 3x3 conv (16, stride 1, pad 1) + BN + ReLU (no max-pool); three stages of n
:class:`~faq_jax.models.resnet.BasicBlock` s with 16/32/64 channels (stride 2 at stages 2
and 3); global average pool; a linear classifier. Depth 6n + 2.

Two shortcut kinds where the shape changes (stages 2 and 3, first block):

- ``resnet20``: option B, 1x1 conv + BN (``downsample_0``/``downsample_1``), classifier
  ``fc``; 272,474 parameters. Names follow torchvision's ResNet: a torchvision-style torch
  model built from ``torchvision.models.resnet.BasicBlock`` converts with the same rule.
- ``cifar_resnet{20,32,44,56,110}``: option A, the paper's CIFAR networks: no parameters,
  ``x[:, ::2, ::2, :]`` with ``planes // 4`` zero channels before and after
  (:func:`~faq_jax.layers.subsample_pad`); classifier ``linear``. Names follow the common
  PyTorch implementation (akamaster/pytorch_resnet_cifar10), so its checkpoints convert key
  for key (``layer1.0.conv1.weight`` -> ``layer1_0/conv1/kernel``); 0.27M / 0.46M / 0.66M /
  0.85M / 1.7M parameters.

Module names: ``conv1``, ``bn1``, ``layer{1-3}_{i}/conv{1,2}``, ``layer{1-3}_{i}/bn{1,2}``,
the classifier (``fc`` or ``linear``). Activation quantizers: ``act`` (stem ReLU),
``layer*_*/act1``, ``layer*_*/act2`` (after the residual add), ``fc_input`` /
``linear_input`` (re-quantizes the pooled features before the classifier); the image passes
``input_quant`` first. In a quantized network the option-A shortcut moves the previous
block's fixed-point codes and adds zeros, so it is exact; the residual add aligns its l with
the block's BN output, as for an identity shortcut.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from faq_jax import layers
from faq_jax.models import resnet
from faq_jax.policy import Policy

# Blocks per stage of the paper's option-A networks (depth 6n + 2).
CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2) with basic blocks; input NHWC 32x32, normalised.

    ``shortcut``: "B" (1x1 conv + BN) or "A" (parameter-free); ``classifier``: the name of
    the final dense layer (its input quantizer is ``<classifier>_input``).
    """

    stage_sizes: Sequence[int] = (3, 3, 3)
    width: int = 16
    policy: Policy | None = None
    num_classes: int = 10
    dtype: Any = None
    shortcut: str = "B"
    classifier: str = "fc"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv, norm, act, dense = layers.defs(self.policy, self.dtype, train)
        x = layers.InputQuant(policy=self.policy, name="input_quant")(x)
        x = conv(self.width, (3, 3), (1, 1), layers.torch_pad(3, 1), name="conv1")(x)
        x = norm(name="bn1")(x)
        x = act(name="act")(x)
        in_planes = self.width
        for stage, n in enumerate(self.stage_sizes):
            planes = self.width * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                down = stride != 1 or in_planes != planes
                x = resnet.BasicBlock(planes, stride, down, conv=conv, norm=norm, act=act,
                                      shortcut=self.shortcut,
                                      name=f"layer{stage + 1}_{i}")(x)
                in_planes = planes
        x = layers.global_avg_pool(x)
        x = act(relu=False, name=f"{self.classifier}_input")(x)
        return dense(self.num_classes, kernel_init=resnet.torch_linear_kernel_init,
                     bias_init=resnet.torch_linear_bias_init(x.shape[-1]),
                     name=self.classifier)(x)

    def roles(self) -> dict[str, str]:
        """Module paths of the policy roles (first conv, classifier, last ReLU, its input)."""
        last = f"layer{len(self.stage_sizes)}_{self.stage_sizes[-1] - 1}"
        return {"first": "conv1", "last": self.classifier, "last_act": f"{last}/act2",
                "classifier_input": f"{self.classifier}_input"}


def resnet20(*, policy: Policy | None = None, num_classes: int = 10,
             dtype: Any = None) -> ResNetCifar:
    """CIFAR ResNet-20 with option-B shortcuts and ``fc`` (272,474 parameters)."""
    return ResNetCifar(stage_sizes=(3, 3, 3), policy=policy, num_classes=num_classes,
                       dtype=dtype)


def cifar_resnet(depth: int, *, policy: Policy | None = None, num_classes: int = 10,
                 dtype: Any = None) -> ResNetCifar:
    """He et al.'s CIFAR ResNet-``depth`` (20, 32, 44, 56, 110): option A, ``linear``."""
    if depth not in CIFAR_DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {sorted(CIFAR_DEPTHS)}, "
                         f"got {depth}")
    n = CIFAR_DEPTHS[depth]
    return ResNetCifar(stage_sizes=(n, n, n), policy=policy, num_classes=num_classes,
                       dtype=dtype, shortcut="A", classifier="linear")


def cifar_resnet20(**kwargs: Any) -> ResNetCifar:
    """ResNet-20, option A: 3 blocks per stage; 269,722 parameters (10 classes)."""
    return cifar_resnet(20, **kwargs)


def cifar_resnet32(**kwargs: Any) -> ResNetCifar:
    """ResNet-32, option A: 5 blocks per stage; 464,154 parameters."""
    return cifar_resnet(32, **kwargs)


def cifar_resnet44(**kwargs: Any) -> ResNetCifar:
    """ResNet-44, option A: 7 blocks per stage; 658,586 parameters."""
    return cifar_resnet(44, **kwargs)


def cifar_resnet56(**kwargs: Any) -> ResNetCifar:
    """ResNet-56, option A: 9 blocks per stage; 853,018 parameters."""
    return cifar_resnet(56, **kwargs)


def cifar_resnet110(**kwargs: Any) -> ResNetCifar:
    """ResNet-110, option A: 18 blocks per stage; 1,727,962 parameters."""
    return cifar_resnet(110, **kwargs)
