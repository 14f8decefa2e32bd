"""The model zoo: torchvision's networks (and CIFAR ResNets) in Flax, float and quantized
from one definition.

``create(arch, policy=...)`` returns a Flax module whose submodule names follow
torchvision's state-dict keys (a numeric index joins its parent with ``_``:
``layer1.0.conv1`` is ``layer1_0/conv1``), so converting weights is a table.
``module.apply(variables, images_nhwc, train=False)`` returns logits.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from faq_jax import keypaths, lsq
from faq_jax.policy import Policy


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    module: str  # faq_jax.models.<module>
    factory: str  # function (policy=, num_classes=, dtype=) -> nn.Module
    image_size: int  # the torchvision evaluation size
    min_size: int  # smallest input the network accepts (used to trace it cheaply)


ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec("resnet", "resnet18", 224, 32),
    "resnet34": ArchSpec("resnet", "resnet34", 224, 32),
    "resnet50": ArchSpec("resnet", "resnet50", 224, 32),
    "resnet101": ArchSpec("resnet", "resnet101", 224, 32),
    "resnet152": ArchSpec("resnet", "resnet152", 224, 32),
    "resnet20": ArchSpec("resnet_cifar", "resnet20", 32, 8),  # option B (1x1 conv + BN)
    # He et al. 2016's CIFAR ResNets, option-A shortcuts (community checkpoints convert).
    "cifar_resnet20": ArchSpec("resnet_cifar", "cifar_resnet20", 32, 8),
    "cifar_resnet32": ArchSpec("resnet_cifar", "cifar_resnet32", 32, 8),
    "cifar_resnet44": ArchSpec("resnet_cifar", "cifar_resnet44", 32, 8),
    "cifar_resnet56": ArchSpec("resnet_cifar", "cifar_resnet56", 32, 8),
    "cifar_resnet110": ArchSpec("resnet_cifar", "cifar_resnet110", 32, 8),
    "vgg16_bn": ArchSpec("vgg", "vgg16_bn", 224, 32),
    "densenet161": ArchSpec("densenet", "densenet161", 224, 32),
    "inception_v3": ArchSpec("inception", "inception_v3", 299, 75),
}


def spec(arch: str) -> ArchSpec:
    """The registry entry of ``arch``; ValueError naming the known ones otherwise."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(sorted(ARCHS))}")
    return ARCHS[arch]


def quant_sites(variables: Any) -> tuple[list[str], list[str]]:
    """(weight paths, activation paths) of a model's quantizers, from its variables: FAQ's
    activation quantizers hold ``quant/.../lsb``, LSQ's a learned step in ``params``."""
    params = variables.get("params", {})
    acts = list(keypaths.owners(variables.get("quant", {}), "lsb"))
    for name in (lsq.STEP, lsq.LOG2_STEP):
        acts += list(keypaths.owners(params, name))
    return list(keypaths.owners(params, "kernel")), acts


def create(arch: str, *, policy: Policy | None = None, num_classes: int = 1000,
           dtype: Any = None, validate: bool = True, **kwargs: Any) -> nn.Module:
    """Builds ``arch`` with precision ``policy`` (None: the float network).

    Args:
      arch: a key of :data:`ARCHS`.
      policy: the precision policy; it is bound to the model's roles (``@first`` ...).
      num_classes: classifier width.
      dtype: operand dtype of convs/dense layers (e.g. ``jnp.bfloat16``); None = float32.
      validate: trace the model once (no compute) to check every policy rule names a layer.
      **kwargs: architecture options (e.g. ``aux_logits``/``transform_input`` for
        inception_v3).

    Returns:
      A Flax module; ``module.apply(variables, x_nhwc, train=False)`` gives logits.
    """
    s = spec(arch)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    factory = getattr(importlib.import_module(f"faq_jax.models.{s.module}"), s.factory)
    module = factory(policy=None, num_classes=num_classes, dtype=dtype, **kwargs)
    if policy is None:
        return module
    policy = policy.with_roles(module.roles())
    module = module.clone(policy=policy)
    if validate and policy.rules:
        x = jax.ShapeDtypeStruct((1, s.min_size, s.min_size, 3), jnp.float32)
        shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
        policy.validate(*quant_sites(shapes))
    return module
