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

import functools
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
    conv: layers.ModuleDef = layers.Conv
    norm: layers.ModuleDef = layers.BatchNorm
    act: layers.ModuleDef = layers.ActQuant

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.norm(name="norm1")(x)
        x = self.act(name="relu1")(x)
        x = self.conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(x)
        x = self.norm(name="norm2")(x)
        x = self.act(name="relu2")(x)
        return self.conv(self.growth_rate, (3, 3), padding=layers.torch_pad(3, 1),
                         name="conv2")(x)


class _DenseBlock(nn.Module):
    """``num_layers`` dense layers; returns the concat of the input and all new maps."""

    num_layers: int
    layer: layers.ModuleDef  # a _DenseLayer with its sizes and layer constructors bound

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        maps = [x]
        for i in range(self.num_layers):
            maps.append(self.layer(name=f"denselayer{i + 1}")(jnp.concatenate(maps, axis=-1)))
        return jnp.concatenate(maps, axis=-1)


class _Transition(nn.Module):
    """norm -> relu -> conv (1x1) -> AvgPool2d(2, 2)."""

    features: int
    conv: layers.ModuleDef = layers.Conv
    norm: layers.ModuleDef = layers.BatchNorm
    act: layers.ModuleDef = layers.ActQuant

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.norm(name="norm")(x)
        x = self.act(name="relu")(x)
        x = self.conv(self.features, (1, 1), name="conv")(x)
        return layers.avg_pool(x, 2, 2)


class _Features(nn.Module):
    """torchvision's ``features`` Sequential: stem, dense blocks, transitions, norm5."""

    growth_rate: int
    block_config: tuple[int, ...]
    num_init_features: int
    bn_size: int
    conv: layers.ModuleDef = layers.Conv
    norm: layers.ModuleDef = layers.BatchNorm
    act: layers.ModuleDef = layers.ActQuant

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        defs = dict(conv=self.conv, norm=self.norm, act=self.act)
        x = self.conv(self.num_init_features, (7, 7), strides=(2, 2),
                      padding=layers.torch_pad(7, 3), name="conv0")(x)
        x = self.norm(name="norm0")(x)
        x = self.act(name="relu0")(x)
        x = layers.max_pool(x, 3, 2, 1)
        layer = functools.partial(_DenseLayer, self.growth_rate, self.bn_size, **defs)
        channels = self.num_init_features
        for b, num_layers in enumerate(self.block_config, start=1):
            x = _DenseBlock(num_layers, layer, name=f"denseblock{b}")(x)
            channels += num_layers * self.growth_rate
            if b != len(self.block_config):
                channels //= 2
                x = _Transition(channels, **defs, name=f"transition{b}")(x)
        return self.norm(name="norm5")(x)


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
        conv, norm, act, dense = layers.defs(self.policy, self.dtype, train)
        conv = functools.partial(conv, kernel_init=_conv_init)
        x = layers.InputQuant(policy=self.policy, name="input_quant")(x)
        x = _Features(self.growth_rate, tuple(self.block_config), self.num_init_features,
                      self.bn_size, conv=conv, norm=norm, act=act, name="features")(x)
        x = act(name="relu5")(x)
        x = layers.global_avg_pool(x)
        x = act(relu=False, name="classifier_input")(x)
        return dense(self.num_classes, kernel_init=_dense_init, name="classifier")(x)


def densenet161(*, policy: Policy | None = None, num_classes: int = 1000,
                dtype: Any = None) -> DenseNet:
    """torchvision ``densenet161`` (28,681,000 parameters at 1000 classes)."""
    return DenseNet(policy=policy, num_classes=num_classes, dtype=dtype, growth_rate=48,
                    block_config=(6, 12, 36, 24), num_init_features=96, bn_size=4)
