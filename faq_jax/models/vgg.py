"""VGG-16 with batch norm (torchvision ``vgg16_bn``), float or FAQ-quantized.

Module paths (torchvision state-dict keys, numeric indices joined with ``_``):

- ``features_{i}``: the ``features`` Sequential; per 3x3 conv entry of config "D" the
  conv (``features_{i}``, with bias), its BatchNorm (``features_{i+1}``) and its ReLU
  activation quantizer (:class:`~faq_jax.layers.ActQuant` ``features_{i+2}``); "M" is a
  2x2 max pool (no module, index still counted). ReLU sites: ``features_2``, ``_5``,
  ``_9``, ..., ``features_42``.
- ``classifier_0_input``: :class:`ActQuant` (relu=False) re-quantizer of the
  ``AdaptiveAvgPool2d((7, 7))`` output, at ``classifier_0``'s activation width. It exists
  only where the pool averages (some bin holds more than one element, e.g. 64x64 images):
  at 224x224 the pool is the identity, at 32x32 a replication of the 1x1 map, and the
  features go to ``classifier_0`` exactly as the last conv's ReLU quantized them.
- ``classifier_0`` (Dense), ``classifier_1`` (ReLU ActQuant), ``classifier_2`` (dropout),
  ``classifier_3``, ``classifier_4`` (ReLU ActQuant), ``classifier_5`` (dropout),
  ``classifier_6`` (the logits Dense).

Roles: first=``features_0``, last=``classifier_6``, last_act=``classifier_4`` (the ReLU
feeding the logits layer), classifier_input=``classifier_4`` too: the logits layer reads that
ReLU directly (through dropout), so FAQ's 8-bit classifier input is that quantizer, and no
re-quantizer sits in front of the 4-bit ``classifier_0``.

torch flattens the pooled map in NCHW order, so the map is transposed to NCHW before
flattening: ``classifier_0``'s kernel is then exactly torch's ``weight.T``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from faq_jax import layers
from faq_jax.policy import Policy

# torchvision's VGG init: convs kaiming-normal fan_out (the Conv default), linears N(0, 0.01).
_dense_init = nn.initializers.normal(0.01)

# torchvision cfgs["D"]: conv widths, "M" = MaxPool2d(2, 2).
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """torchvision VGG with BatchNorm; ``cfg`` as torchvision's ``cfgs``."""

    policy: Policy | None = None
    num_classes: int = 1000
    dtype: Any = None
    cfg: tuple[int | str, ...] = VGG16_CFG
    dropout: float = 0.5

    def roles(self) -> dict[str, str]:
        """Module path of each policy role (see the module docstring)."""
        return {"first": "features_0", "last": "classifier_6", "last_act": "classifier_4",
                "classifier_input": "classifier_4"}

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv, norm, act, dense = layers.defs(self.policy, self.dtype, train)
        dense = functools.partial(dense, kernel_init=_dense_init)
        dropout = functools.partial(nn.Dropout, self.dropout, deterministic=not train)
        x = layers.InputQuant(policy=self.policy, name="input_quant")(x)
        i = 0
        for v in self.cfg:
            if v == "M":
                x = layers.max_pool(x, 2, 2, 0)
                i += 1
                continue
            x = conv(v, (3, 3), padding=layers.torch_pad(3, 1), use_bias=True,
                     name=f"features_{i}")(x)
            x = norm(name=f"features_{i + 1}")(x)
            x = act(name=f"features_{i + 2}")(x)
            i += 3
        averages = layers.adaptive_pool_averages(x.shape[1:3], (7, 7))
        x = layers.adaptive_avg_pool(x, (7, 7))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch's NCHW flatten
        if averages:  # an average feeds classifier_0: back onto its input grid
            x = act(relu=False, name="classifier_0_input")(x)
        x = dense(4096, name="classifier_0")(x)
        x = act(name="classifier_1")(x)
        x = dropout(name="classifier_2")(x)
        x = dense(4096, name="classifier_3")(x)
        x = act(name="classifier_4")(x)
        x = dropout(name="classifier_5")(x)
        return dense(self.num_classes, name="classifier_6")(x)


def vgg16_bn(*, policy: Policy | None = None, num_classes: int = 1000, dtype: Any = None,
             dropout: float = 0.5) -> VGG:
    """torchvision ``vgg16_bn`` (138,365,992 parameters at 1000 classes)."""
    return VGG(policy=policy, num_classes=num_classes, dtype=dtype, cfg=VGG16_CFG,
               dropout=dropout)
