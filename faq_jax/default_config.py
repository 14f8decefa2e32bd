"""The embedded default config (digits, ResNet-20, fp32 -> FAQ W4A4); no download needed.

``python -m faq_jax.main --workdir=/tmp/faq_demo`` uses it when ``--config`` is absent,
and it takes overrides like any other: ``--config.num_epochs=2``.
"""

from faq_jax import config_defaults


def get_config():
    return config_defaults.default_config()
