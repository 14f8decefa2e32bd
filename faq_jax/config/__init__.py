"""Run configurations: every knob with its paper value, the embedded demo, validation.

- :mod:`~faq_jax.config.defaults`: :func:`get_base` and the recipes ``configs/*.py`` build
  on (``paper_finetune``, ``cifar10_base``, ``runlocal``, ``with_arg``);
- :mod:`~faq_jax.config.demo`: the config ``python -m faq_jax.main`` runs without
  ``--config`` (digits, ResNet-20, W4A4);
- :mod:`~faq_jax.config.check`: validation before any compute (imports the model zoo and
  the data sources; import it explicitly).

This package and ``defaults`` import only ml_collections, so config files load fast.
"""

from faq_jax.config.defaults import (
    cifar10_base,
    data_config,
    get_base,
    optim_config,
    paper_finetune,
    runlocal,
    shared_cifar10_archive,
    shared_cifar10_test_archive,
    with_arg,
)

__all__ = [
    "cifar10_base",
    "data_config",
    "get_base",
    "optim_config",
    "paper_finetune",
    "runlocal",
    "shared_cifar10_archive",
    "shared_cifar10_test_archive",
    "with_arg",
]
