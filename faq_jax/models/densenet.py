"""DenseNet-161 (torchvision ``densenet161``), float or FAQ-quantized.

Module paths (torchvision state-dict keys; memory-efficient checkpointing is irrelevant):

- ``features/conv0`` (7x7/2, pad 3), ``features/norm0``, ``features/relu0`` (ReLU
  :class:`~faq_jax.layers.ActQuant`), then a 3x3/2 max pool (pad 1).
- ``features/denseblock{b}/denselayer{l}/{norm1,relu1,conv1,norm2,relu2,conv2}``:
  pre-activation layers (BN -> ReLU ActQuant -> conv); each layer reads the concat of
  all earlier maps. The concat feeds a BatchNorm, not a conv, so it needs no
  re-quantizer: every conv reads a ReLU quantizer's output.
- ``features/transition{b}/{norm,relu,conv}`` then AvgPool2d(2, 2) (the pooled map
  feeds the next block's BatchNorms, again no conv).
- ``features/norm5``; ``relu5`` (ReLU ActQuant, torchvision's functional ReLU);
  global average pool; ``classifier_input`` (ActQuant relu=False, re-quantizes the
  pooled map); ``classifier`` (Dense).

Roles: first=``features/conv0``, last=``classifier``, last_act=``relu5``,
classifier_input=``classifier_input``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from faq_jax import layers
from faq_jax.policy import Policy

# torchvision's DenseNet init: convs kaiming_normal_ (fan_in, ReLU gain), linear bias 0 and
# torch's default linear weight init U(+-1/sqrt(fan_in)).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
_dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class _DenseLayer(nn.Module):
    """norm1 -> relu1 -> conv1 (1x1, bn_size*growth) -> norm2 -> relu2 -> conv2 (3x3)."""

    growth_rate: int
    bn_size: int
    policy: Policy | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        p, dt = self.policy, self.dtype
        x = layers.BatchNorm(policy=p, name="norm1")(x, train)
        x = layers.ActQuant(policy=p, name="relu1")(x)
        x = layers.Conv(self.bn_size * self.growth_rate, (1, 1), policy=p, dtype=dt,
                        kernel_init=_conv_init, name="conv1")(x)
        x = layers.BatchNorm(policy=p, name="norm2")(x, train)
        x = layers.ActQuant(policy=p, name="relu2")(x)
        return layers.Conv(self.growth_rate, (3, 3), padding=layers.torch_pad(3, 1),
                           policy=p, dtype=dt, kernel_init=_conv_init, name="conv2")(x)


class _DenseBlock(nn.Module):
    """``num_layers`` dense layers; returns the concat of the input and all new maps."""

    num_layers: int
    growth_rate: int
    bn_size: int
    policy: Policy | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        maps = [x]
        for i in range(self.num_layers):
            layer = _DenseLayer(self.growth_rate, self.bn_size, policy=self.policy,
                                dtype=self.dtype, name=f"denselayer{i + 1}")
            maps.append(layer(jnp.concatenate(maps, axis=-1), train))
        return jnp.concatenate(maps, axis=-1)


class _Transition(nn.Module):
    """norm -> relu -> conv (1x1) -> AvgPool2d(2, 2)."""

    features: int
    policy: Policy | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = layers.BatchNorm(policy=self.policy, name="norm")(x, train)
        x = layers.ActQuant(policy=self.policy, name="relu")(x)
        x = layers.Conv(self.features, (1, 1), policy=self.policy, dtype=self.dtype,
                        kernel_init=_conv_init, name="conv")(x)
        return layers.avg_pool(x, 2, 2)


class _Features(nn.Module):
    """torchvision's ``features`` Sequential: stem, dense blocks, transitions, norm5."""

    growth_rate: int
    block_config: tuple[int, ...]
    num_init_features: int
    bn_size: int
    policy: Policy | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        p, dt = self.policy, self.dtype
        x = layers.Conv(self.num_init_features, (7, 7), strides=(2, 2),
                        padding=layers.torch_pad(7, 3), policy=p, dtype=dt, kernel_init=_conv_init,
                        name="conv0")(x)
        x = layers.BatchNorm(policy=p, name="norm0")(x, train)
        x = layers.ActQuant(policy=p, name="relu0")(x)
        x = layers.max_pool(x, 3, 2, 1)
        channels = self.num_init_features
        for b, num_layers in enumerate(self.block_config, start=1):
            x = _DenseBlock(num_layers, self.growth_rate, self.bn_size, policy=p, dtype=dt,
                            name=f"denseblock{b}")(x, train)
            channels += num_layers * self.growth_rate
            if b != len(self.block_config):
                channels //= 2
                x = _Transition(channels, policy=p, dtype=dt, name=f"transition{b}")(x, train)
        return layers.BatchNorm(policy=p, name="norm5")(x, train)


class DenseNet(nn.Module):
    """torchvision DenseNet-BC (drop_rate 0, as torchvision's factories)."""

    policy: Policy | None = None
    num_classes: int = 1000
    dtype: Any = None
    growth_rate: int = 48
    block_config: tuple[int, ...] = (6, 12, 36, 24)
    num_init_features: int = 96
    bn_size: int = 4

    def roles(self) -> dict[str, str]:
        """Module path of each policy role (see the module docstring)."""
        return {"first": "features/conv0", "last": "classifier", "last_act": "relu5",
                "classifier_input": "classifier_input"}

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        p = self.policy
        x = layers.InputQuant(policy=p, name="input_quant")(x)
        x = _Features(self.growth_rate, tuple(self.block_config), self.num_init_features,
                      self.bn_size, policy=p, dtype=self.dtype, name="features")(x, train)
        x = layers.ActQuant(policy=p, name="relu5")(x)
        x = layers.global_avg_pool(x)
        x = layers.ActQuant(relu=False, policy=p, name="classifier_input")(x)
        return layers.Dense(self.num_classes, policy=p, dtype=self.dtype,
                            kernel_init=_dense_init, name="classifier")(x)


def densenet161(*, policy: Policy | None = None, num_classes: int = 1000,
                dtype: Any = None) -> DenseNet:
    """torchvision ``densenet161`` (28,681,000 parameters at 1000 classes)."""
    return DenseNet(policy=policy, num_classes=num_classes, dtype=dtype, growth_rate=48,
                    block_config=(6, 12, 36, 24), num_init_features=96, bn_size=4)
