"""Inception-v3 (torchvision ``inception_v3``), float or FAQ-quantized.

Module paths (torchvision state-dict keys):

- Every ``BasicConv2d`` ``X`` is ``X/conv`` (no bias), ``X/bn`` (BatchNorm, eps 0.001)
  and ``X/act`` (its ReLU :class:`~faq_jax.layers.ActQuant`), e.g. ``Conv2d_1a_3x3/act``,
  ``Mixed_6b/branch7x7_2/act``, ``AuxLogits/conv1/act``.
- Re-quantizers (ActQuant relu=False, FAQ.md section 2), named ``<consumer>_input``:
  ``Mixed_*/block_input`` on the input of every Mixed block after ``Mixed_5b`` (a concat
  of branches with different l's, read by convs); ``Mixed_{5b..5d,6b..6e,7b,7c}/
  branch_pool_input`` on the ``avg_pool2d(3, 1, 1)`` (count_include_pad) output read by
  ``branch_pool``; ``AuxLogits/conv0_input`` (after ``avg_pool2d(5, 3)``),
  ``AuxLogits/fc_input`` (after the adaptive pool) and ``fc_input`` (after the final
  pool). ``input_quant`` quantizes the (transformed) image.
- Heads: ``AuxLogits/{conv0,conv1,fc}``; ``fc``.

Roles: first=``Conv2d_1a_3x3/conv``, last=``fc``, last_act=:data:`LAST_ACTS` (the six
branch ReLUs of ``Mixed_7c`` whose outputs are concatenated, pooled and read by the
classifier), classifier_input=``fc_input``.

The aux head runs in training (as torchvision), at ``init`` (so its variables exist) and
in calibration passes (so its quantizers get calibrated l's); eval returns main logits.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from faq_jax import layers
from faq_jax.layers import CALIB
from faq_jax.policy import Policy

# The ReLUs that feed the classifier: Mixed_7c's branch outputs (not its inner ReLUs).
LAST_ACTS = "|".join(f"Mixed_7c/{b}/act" for b in (
    "branch1x1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_3a", "branch3x3dbl_3b",
    "branch_pool"))

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _trunc_normal(std: float) -> layers.Initializer:
    """torchvision's Inception init: trunc_normal_(std=std, a=-2, b=2) (absolute bounds)."""
    return nn.initializers.truncated_normal(std, lower=-2.0 / std, upper=2.0 / std)


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU ActQuant, named conv/bn/act."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)  # torch (pad_h, pad_w), symmetric per axis
    stddev: float = 0.1  # init only (torchvision: 0.1, AuxLogits.conv1 0.01)
    conv: layers.ModuleDef = layers.Conv
    norm: layers.ModuleDef = layers.BatchNorm
    act: layers.ModuleDef = layers.ActQuant

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = self.padding
        x = self.conv(self.features, self.kernel_size, strides=self.strides,
                      padding=((ph, ph), (pw, pw)), kernel_init=_trunc_normal(self.stddev),
                      name="conv")(x)
        x = self.norm(epsilon=1e-3, name="bn")(x)
        return self.act(name="act")(x)


class _Block(nn.Module):
    """Shared plumbing of the Mixed blocks: named BasicConv2d's and re-quantizers.

    ``basic`` builds a BasicConv2d (its conv/norm/act bound), ``act`` an ActQuant; the
    blocks take no ``train``: the network bound it into ``basic``.
    """

    basic: layers.ModuleDef = BasicConv2d
    act: layers.ModuleDef = layers.ActQuant
    requant_input: bool = True  # False only for Mixed_5b (its input is one max-pooled map)

    def conv(self, name: str, features: int, kernel: int | tuple[int, int], stride: int = 1,
             padding: int | tuple[int, int] = 0, stddev: float = 0.1) -> nn.Module:
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        pad = (padding, padding) if isinstance(padding, int) else padding
        return self.basic(features, k, (stride, stride), pad, stddev=stddev, name=name)

    def requant(self, name: str, x: jax.Array) -> jax.Array:
        return self.act(relu=False, name=name)(x)

    def block_input(self, x: jax.Array) -> jax.Array:
        return self.requant("block_input", x) if self.requant_input else x

    def branch_pool(self, x: jax.Array, features: int) -> jax.Array:
        x = self.requant("branch_pool_input", layers.avg_pool(x, 3, 1, 1))
        return self.conv("branch_pool", features, 1)(x)


class InceptionA(_Block):
    pool_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.block_input(x)
        b1 = self.conv("branch1x1", 64, 1)(x)
        b5 = self.conv("branch5x5_1", 48, 1)(x)
        b5 = self.conv("branch5x5_2", 64, 5, padding=2)(b5)
        b3 = self.conv("branch3x3dbl_1", 64, 1)(x)
        b3 = self.conv("branch3x3dbl_2", 96, 3, padding=1)(b3)
        b3 = self.conv("branch3x3dbl_3", 96, 3, padding=1)(b3)
        bp = self.branch_pool(x, self.pool_features)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.block_input(x)
        b3 = self.conv("branch3x3", 384, 3, stride=2)(x)
        bd = self.conv("branch3x3dbl_1", 64, 1)(x)
        bd = self.conv("branch3x3dbl_2", 96, 3, padding=1)(bd)
        bd = self.conv("branch3x3dbl_3", 96, 3, stride=2)(bd)
        return jnp.concatenate([b3, bd, layers.max_pool(x, 3, 2, 0)], axis=-1)


class InceptionC(_Block):
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        x = self.block_input(x)
        b1 = self.conv("branch1x1", 192, 1)(x)
        b7 = self.conv("branch7x7_1", c7, 1)(x)
        b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
        bd = self.conv("branch7x7dbl_1", c7, 1)(x)
        bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = self.branch_pool(x, 192)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.block_input(x)
        b3 = self.conv("branch3x3_1", 192, 1)(x)
        b3 = self.conv("branch3x3_2", 320, 3, stride=2)(b3)
        b7 = self.conv("branch7x7x3_1", 192, 1)(x)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = self.conv("branch7x7x3_4", 192, 3, stride=2)(b7)
        return jnp.concatenate([b3, b7, layers.max_pool(x, 3, 2, 0)], axis=-1)


class InceptionE(_Block):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.block_input(x)
        b1 = self.conv("branch1x1", 320, 1)(x)
        b3 = self.conv("branch3x3_1", 384, 1)(x)
        b3 = jnp.concatenate([
            self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
            self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3)], axis=-1)
        bd = self.conv("branch3x3dbl_1", 448, 1)(x)
        bd = self.conv("branch3x3dbl_2", 384, 3, padding=1)(bd)
        bd = jnp.concatenate([
            self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
            self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd)], axis=-1)
        bp = self.branch_pool(x, 192)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(_Block):
    """avg_pool2d(5, 3) -> conv0 (1x1, 128) -> conv1 (5x5, 768) -> pool -> fc."""

    dense: layers.ModuleDef = layers.Dense
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.requant("conv0_input", layers.avg_pool(x, 5, 3))
        x = self.conv("conv0", 128, 1)(x)
        x = self.conv("conv1", 768, 5, stddev=0.01)(x)
        x = self.requant("fc_input", layers.global_avg_pool(x))
        return self.dense(self.num_classes, kernel_init=_trunc_normal(0.001), name="fc")(x)


class Inception3(nn.Module):
    """torchvision Inception3; training with ``aux_logits`` returns (logits, aux)."""

    policy: Policy | None = None
    num_classes: int = 1000
    dtype: Any = None
    aux_logits: bool = True
    transform_input: bool = True
    dropout: float = 0.5

    def roles(self) -> dict[str, str]:
        """Module path of each policy role (see the module docstring)."""
        return {"first": "Conv2d_1a_3x3/conv", "last": "fc", "last_act": LAST_ACTS,
                "classifier_input": "fc_input"}

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | tuple[jax.Array, ...]:
        conv, norm, act, dense = layers.defs(self.policy, self.dtype, train)
        basic = functools.partial(BasicConv2d, conv=conv, norm=norm, act=act)
        kw = dict(basic=basic, act=act)  # what every Mixed block builds from
        if self.transform_input:  # ImageNet normalisation -> the [-1, 1] one of the weights
            std, mean = jnp.asarray(_STD, x.dtype), jnp.asarray(_MEAN, x.dtype)
            x = x * (std / 0.5) + (mean - 0.5) / 0.5
        x = layers.InputQuant(policy=self.policy, name="input_quant")(x)
        x = basic(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
        x = basic(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = basic(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = layers.max_pool(x, 3, 2, 0)
        x = basic(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = basic(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = layers.max_pool(x, 3, 2, 0)
        x = InceptionA(**kw, requant_input=False, pool_features=32, name="Mixed_5b")(x)
        x = InceptionA(**kw, pool_features=64, name="Mixed_5c")(x)
        x = InceptionA(**kw, pool_features=64, name="Mixed_5d")(x)
        x = InceptionB(**kw, name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(**kw, channels_7x7=c7, name=name)(x)
        aux = None
        run_aux = self.aux_logits and (train or self.is_initializing()
                                       or self.is_mutable_collection(CALIB))
        aux_in = x
        if run_aux and not train and min(x.shape[1:3]) < 17:
            # Inputs well below 299 leave too small a map for the aux head's 5x5 pool and
            # conv. Its variables do not depend on the map size, so init (which discards
            # the aux output) uses a 17x17 stand-in; calibration skips the head.
            aux_in = jnp.zeros((x.shape[0], 17, 17, x.shape[-1]), x.dtype)
            run_aux = self.is_initializing()
        if run_aux:
            aux = InceptionAux(**kw, dense=dense, num_classes=self.num_classes,
                               name="AuxLogits")(aux_in)
        x = InceptionD(**kw, name="Mixed_7a")(x)
        x = InceptionE(**kw, name="Mixed_7b")(x)
        x = InceptionE(**kw, name="Mixed_7c")(x)
        x = act(relu=False, name="fc_input")(layers.global_avg_pool(x))
        x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        x = dense(self.num_classes, kernel_init=_trunc_normal(0.1), name="fc")(x)
        if train and aux is not None:
            return x, aux
        return x


def inception_v3(*, policy: Policy | None = None, num_classes: int = 1000, dtype: Any = None,
                 aux_logits: bool = True, transform_input: bool = True,
                 dropout: float = 0.5) -> Inception3:
    """torchvision ``inception_v3`` (27,161,264 parameters with the aux head)."""
    return Inception3(policy=policy, num_classes=num_classes, dtype=dtype,
                      aux_logits=aux_logits, transform_input=transform_input,
                      dropout=dropout)
