"""torchvision's ResNet-18/34/50/101/152 (v1.5) in Flax, float or FAQ-quantized.

One definition serves both: with ``policy=None`` it is exactly torchvision's float network
(same parameters, same arithmetic, explicit torch padding); with a policy every conv/dense
weight, folded BatchNorm, ReLU output and the classifier input is fixed point.

Submodule names are torchvision's state-dict keys with ``.<index>`` written ``_<index>``:
``conv1``, ``bn1``, ``layer{1-4}_{i}/conv{1,2,3}``, ``layer{1-4}_{i}/bn{1,2,3}``,
``layer{1-4}_{i}/downsample_0`` (1x1 conv) and ``downsample_1`` (its BN), ``fc``.

Activation quantizers (:class:`~faq_jax.layers.ActQuant`, one per ReLU site, each with its
own calibrated l in ``quant/lsb``):

- ``act``: the stem ReLU (after ``bn1``, before the max-pool);
- ``layer*_*/act1`` (and ``act2`` in a bottleneck): the ReLUs inside a block;
- ``layer*_*/act2`` (basic block) or ``act3`` (bottleneck): the ReLU after the residual add;
- ``fc_input``: re-quantizes the global average pool's output before ``fc`` (no ReLU).

The image first passes ``input_quant`` (:class:`~faq_jax.layers.InputQuant`).

The network builds its layer constructors once (``conv``, ``norm``, ``act``, ``dense`` from
:func:`faq_jax.layers.defs`: the policy, dtype and train mode bound) and hands them to the
blocks, which read like torchvision's float blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from faq_jax import layers
from faq_jax.policy import Policy


def torch_linear_bias_init(fan_in: int) -> layers.Initializer:
    """torch.nn.Linear's bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# torch.nn.Linear's weight init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class BasicBlock(nn.Module):
    """Two 3x3 convs; stride on the first; ReLU after the residual add (``act2``).

    ``shortcut`` says what ``downsample`` means: "B" (torchvision's 1x1 conv + BN) or "A"
    (He et al.'s parameter-free subsampling + zero channels, :func:`layers.subsample_pad`).
    """

    planes: int
    stride: int = 1
    downsample: bool = False
    conv: layers.ModuleDef = layers.Conv
    norm: layers.ModuleDef = layers.BatchNorm
    act: layers.ModuleDef = layers.ActQuant
    shortcut: str = "B"

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = (self.stride, self.stride)
        out = self.conv(self.planes, (3, 3), s, layers.torch_pad(3, 1), name="conv1")(x)
        out = self.norm(name="bn1")(out)
        out = self.act(name="act1")(out)
        out = self.conv(self.planes, (3, 3), (1, 1), layers.torch_pad(3, 1), name="conv2")(out)
        out = self.norm(name="bn2")(out)
        identity = _shortcut(self, x, self.planes * self.expansion)
        return self.act(name="act2")(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided: ResNet v1.5) -> 1x1 (x4); ReLU after the add (``act3``)."""

    planes: int
    stride: int = 1
    downsample: bool = False
    conv: layers.ModuleDef = layers.Conv
    norm: layers.ModuleDef = layers.BatchNorm
    act: layers.ModuleDef = layers.ActQuant

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = (self.stride, self.stride)
        out = self.conv(self.planes, (1, 1), name="conv1")(x)
        out = self.norm(name="bn1")(out)
        out = self.act(name="act1")(out)
        out = self.conv(self.planes, (3, 3), s, layers.torch_pad(3, 1), name="conv2")(out)
        out = self.norm(name="bn2")(out)
        out = self.act(name="act2")(out)
        out = self.conv(self.planes * 4, (1, 1), name="conv3")(out)
        out = self.norm(name="bn3")(out)
        identity = _shortcut(self, x, self.planes * self.expansion)
        return self.act(name="act3")(out + identity)


def _shortcut(block: nn.Module, x: jax.Array, features: int) -> jax.Array:
    """The identity, or, when shapes change, torchvision's downsample (1x1 strided conv + BN;
    option B) or the parameter-free option A (every stride-th pixel, zero channels padded
    evenly on both sides)."""
    if not block.downsample:
        return x
    kind = getattr(block, "shortcut", "B")
    if kind not in ("A", "B"):
        raise ValueError(f"{'/'.join(block.path)}: shortcut must be 'A' or 'B', got {kind!r}")
    if kind == "A":
        extra = features - x.shape[-1]
        if extra < 0 or extra % 2:
            raise ValueError(f"{'/'.join(block.path)}: an option-A shortcut pads channels "
                             f"evenly; {x.shape[-1]} -> {features} cannot")
        return layers.subsample_pad(x, block.stride, extra // 2, extra // 2)
    y = block.conv(features, (1, 1), (block.stride, block.stride), name="downsample_0")(x)
    return block.norm(name="downsample_1")(y)


class ResNet(nn.Module):
    """torchvision ``ResNet`` (v1.5); input NHWC, normalised with ImageNet mean/std."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    policy: Policy | None = None
    num_classes: int = 1000
    dtype: Any = None

    @property
    def _block(self) -> type[nn.Module]:
        return Bottleneck if self.bottleneck else BasicBlock

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv, norm, act, dense = layers.defs(self.policy, self.dtype, train)
        x = layers.InputQuant(policy=self.policy, name="input_quant")(x)
        x = conv(64, (7, 7), (2, 2), layers.torch_pad(7, 3), name="conv1")(x)
        x = norm(name="bn1")(x)
        x = act(name="act")(x)
        x = layers.max_pool(x, 3, 2, 1)  # torch pads the max-pool with -inf
        block, in_planes = self._block, 64
        for stage, n in enumerate(self.stage_sizes):
            planes = 64 * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                down = stride != 1 or in_planes != planes * block.expansion
                x = block(planes, stride, down, conv=conv, norm=norm, act=act,
                          name=f"layer{stage + 1}_{i}")(x)
                in_planes = planes * block.expansion
        x = layers.global_avg_pool(x)
        x = act(relu=False, name="fc_input")(x)
        return dense(self.num_classes, kernel_init=torch_linear_kernel_init,
                     bias_init=torch_linear_bias_init(x.shape[-1]), name="fc")(x)

    def roles(self) -> dict[str, str]:
        """Module paths of the policy roles (first conv, fc, last ReLU, fc's input)."""
        last = f"layer{len(self.stage_sizes)}_{self.stage_sizes[-1] - 1}"
        return {"first": "conv1", "last": "fc",
                "last_act": f"{last}/{'act3' if self.bottleneck else 'act2'}",
                "classifier_input": "fc_input"}


def _resnet(stage_sizes: Sequence[int], bottleneck: bool, policy: Policy | None,
            num_classes: int, dtype: Any) -> ResNet:
    return ResNet(stage_sizes=tuple(stage_sizes), bottleneck=bottleneck, policy=policy,
                  num_classes=num_classes, dtype=dtype)


def resnet18(*, policy: Policy | None = None, num_classes: int = 1000,
             dtype: Any = None) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2); 11,689,512 parameters at 1000 classes."""
    return _resnet((2, 2, 2, 2), False, policy, num_classes, dtype)


def resnet34(*, policy: Policy | None = None, num_classes: int = 1000,
             dtype: Any = None) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3); 21,797,672 parameters."""
    return _resnet((3, 4, 6, 3), False, policy, num_classes, dtype)


def resnet50(*, policy: Policy | None = None, num_classes: int = 1000,
             dtype: Any = None) -> ResNet:
    """ResNet-50 (v1.5): bottlenecks (3, 4, 6, 3); 25,557,032 parameters."""
    return _resnet((3, 4, 6, 3), True, policy, num_classes, dtype)


def resnet101(*, policy: Policy | None = None, num_classes: int = 1000,
              dtype: Any = None) -> ResNet:
    """ResNet-101 (v1.5): bottlenecks (3, 4, 23, 3); 44,549,160 parameters."""
    return _resnet((3, 4, 23, 3), True, policy, num_classes, dtype)


def resnet152(*, policy: Policy | None = None, num_classes: int = 1000,
              dtype: Any = None) -> ResNet:
    """ResNet-152 (v1.5): bottlenecks (3, 8, 36, 3); 60,192,808 parameters."""
    return _resnet((3, 8, 36, 3), True, policy, num_classes, dtype)
